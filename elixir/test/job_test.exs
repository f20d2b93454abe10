defmodule Pyport.JobTest do
  use ExUnit.Case, async: false

  @moduletag :sandbox

  setup_all do
    # A keyword list where pyport takes a map.
    start_supervised!({Pyport.Pool, name: :ex_cells, size: 1, sandbox: [max_output: 4096]})
    :ok
  end

  test "run returns the value, what the job printed and what it cost" do
    assert {:ok, %Pyport.Job.Result{value: 42, stdout: "computing\n", stderr: ""} = r} =
             Pyport.Job.run(:ex_cells, "print('computing')\ninput * 2", input: 21)

    assert is_integer(r.cpu_ms) and is_integer(r.wall_ms) and r.max_rss > 0

    # Inputs and values convert as calls' do.
    assert {:ok, %{value: %{"born" => "1815-12-10", "none" => nil}}} =
             Pyport.Job.run(:ex_cells, "result = {'born': input['born'], 'none': None}",
               input: %{born: ~D[1815-12-10]}
             )

    assert %Pyport.Job.Result{value: nil} = Pyport.Job.run!(:ex_cells, "x = 1")
  end

  test "a Python exception: type, message, traceback, and what was printed" do
    assert {:error, %Pyport.Error{type: "ZeroDivisionError", message: "division by zero"} = e} =
             Pyport.Job.run(:ex_cells, "print('dividing')\n1 / 0")

    assert e.traceback =~ "ZeroDivisionError"
    assert {:exception, %{stdout: "dividing\n"}} = e.reason

    assert_raise Pyport.Error, "ZeroDivisionError: division by zero", fn ->
      Pyport.Job.run!(:ex_cells, "1 / 0")
    end
  end

  test "the sandbox's verdicts" do
    assert {:error, %Pyport.Error{type: nil, reason: :timeout}} =
             Pyport.Job.run(:ex_cells, "while True: pass", timeout: 500)

    assert {:error, %Pyport.Error{reason: {:forbidden, "socket"}} = e} =
             Pyport.Job.run(
               :ex_cells,
               "import socket\nsocket.create_connection(('127.0.0.1', 80))"
             )

    assert e.type == nil
    assert Exception.message(e) =~ "forbidden"

    assert {:error, %Pyport.Error{reason: {:output_limit, 4096}}} =
             Pyport.Job.run(:ex_cells, "print('x' * 100_000)")

    assert {:error, %Pyport.Error{reason: {:bad_job, _}}} =
             Pyport.Job.run(:ex_cells, "1", timeout: -5)

    assert {:error, %Pyport.Error{reason: {:bad_job, _}}} =
             Pyport.Job.run(:ex_cells, "1", bogus: 1)

    # The worker stays: the next job runs.
    assert {:ok, %{value: 2}} = Pyport.Job.run(:ex_cells, "1 + 1")
  end

  test "not a sandboxed pool, no pool" do
    assert {:error, %Pyport.Error{reason: {:not_sandboxed, :default}} = e} =
             Pyport.Job.run(:default, "1")

    assert Exception.message(e) == "pool :default is not sandboxed"

    assert {:error, %Pyport.Error{reason: {:no_pool, :ex_nope}}} = Pyport.Job.run(:ex_nope, "1")
  end
end
