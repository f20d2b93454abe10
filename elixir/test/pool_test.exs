defmodule Pyport.PoolTest do
  use ExUnit.Case, async: false

  # Killing and stopping pools under their children logs crash reports.
  @moduletag :capture_log

  doctest Pyport.Pool

  @python_dir Application.compile_env(:pyport, :test_python_dir) ||
                Path.expand("python", __DIR__)

  defp os_pids(pool) do
    {:ok, %{workers: workers}} = Pyport.Pool.info(pool)
    for %{os_pid: os_pid} <- workers, do: os_pid
  end

  defp alive?(os_pid), do: File.exists?("/proc/#{os_pid}")

  defp wait_until(fun, tries \\ 2000) do
    cond do
      fun.() -> :ok
      tries > 1 -> Process.sleep(10) && wait_until(fun, tries - 1)
      true -> flunk("condition never true")
    end
  end

  test "a pool under the user's supervisor serves calls and stops with it" do
    ports = length(Port.list())

    children = [
      {Pyport.Pool, name: :ex_tree, size: 2, python_path: [@python_dir]},
      {Pyport.Pool, name: :ex_tree2, size: 1}
    ]

    {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one)

    assert [
             {{Pyport.Pool, :ex_tree2}, _, :worker, [Pyport.Pool]},
             {{Pyport.Pool, :ex_tree}, _, :worker, [Pyport.Pool]}
           ] = Supervisor.which_children(sup)

    assert {:ok, os_pid} = Pyport.call(:ex_helpers, :getpid, [], pool: :ex_tree)
    assert {:ok, 2} = Pyport.call(:operator, :add, [1, 1], pool: :ex_tree2)
    # One of pyport's pools: listed, introspectable.
    assert :ex_tree in :pyport.pools()
    assert os_pid in os_pids(:ex_tree)
    pids = os_pids(:ex_tree) ++ os_pids(:ex_tree2)
    assert length(pids) == 3

    :ok = Supervisor.stop(sup)

    refute :ex_tree in :pyport.pools()
    refute :ex_tree2 in :pyport.pools()

    assert {:error, %Pyport.Error{reason: {:no_pool, :ex_tree}}} =
             Pyport.call(:operator, :add, [1, 1], pool: :ex_tree)

    # The workers' OS processes and ports are gone with the tree.
    wait_until(fn -> not Enum.any?(pids, &alive?/1) end)
    assert length(Port.list()) == ports
  end

  test "a pool stopped under it makes the child exit; the user's tree restarts it" do
    {:ok, sup} =
      Supervisor.start_link([{Pyport.Pool, name: :ex_restart, size: 1}], strategy: :one_for_one)

    [{_, keeper, _, _}] = Supervisor.which_children(sup)
    ref = Process.monitor(keeper)
    [old_os_pid] = os_pids(:ex_restart)

    # The pool goes away under the child (as when its supervisor gives up).
    :ok = :pyport.stop_pool(:ex_restart)

    assert_receive {:DOWN, ^ref, :process, ^keeper, {:pool_down, :ex_restart, _}}, 30_000

    wait_until(fn ->
      match?([{_, pid, _, _}] when is_pid(pid) and pid != keeper, Supervisor.which_children(sup))
    end)

    assert {:ok, 3} = Pyport.call(:operator, :add, [1, 2], pool: :ex_restart)
    refute old_os_pid in os_pids(:ex_restart)
    :ok = Supervisor.stop(sup)
    refute :ex_restart in :pyport.pools()
  end

  test "a pool killed under it: the child exits and stops what pyport restarted" do
    {:ok, sup} =
      Supervisor.start_link([{Pyport.Pool, name: :ex_killed, size: 1}], strategy: :one_for_one)

    [{_, keeper, _, _}] = Supervisor.which_children(sup)
    ref = Process.monitor(keeper)

    [pool_sup] =
      for {{:pool, :ex_killed}, pid, _, _} <- Supervisor.which_children(:pyport_pools_sup),
          do: pid

    Process.exit(pool_sup, :kill)
    assert_receive {:DOWN, ^ref, :process, ^keeper, {:pool_down, :ex_killed, :killed}}, 30_000

    wait_until(fn ->
      match?([{_, pid, _, _}] when is_pid(pid) and pid != keeper, Supervisor.which_children(sup))
    end)

    assert {:ok, 3} = Pyport.call(:operator, :add, [1, 2], pool: :ex_killed)
    # One pool of that name, the new child's.
    assert [_] =
             for(
               {{:pool, :ex_killed}, _, _, _} <- Supervisor.which_children(:pyport_pools_sup),
               do: :x
             )

    :ok = Supervisor.stop(sup)
    refute :ex_killed in :pyport.pools()
  end

  test "bad options, a taken name and a bad name fail the start with pyport's reason" do
    Process.flag(:trap_exit, true)

    assert {:error, {:invalid_pool_option, :ex_bad, :size, 0}} =
             Pyport.Pool.start_link(name: :ex_bad, size: 0)

    assert {:error, {:already_started, :default}} = Pyport.Pool.start_link(name: :default)
    assert {:error, {:invalid_pool_name, "x"}} = Pyport.Pool.start_link(name: "x")

    assert {:error,
            {:shutdown,
             {:failed_to_start_child, {Pyport.Pool, :ex_bad},
              {:invalid_pool_option, :ex_bad, :size, 0}}}} =
             Supervisor.start_link([{Pyport.Pool, name: :ex_bad, size: 0}], strategy: :one_for_one)

    # A configured pool taken over by no one: still running.
    assert {:ok, 2} = Pyport.call(:operator, :add, [1, 1])
    refute :ex_bad in :pyport.pools()
  end

  test "child_spec" do
    assert %{
             id: {Pyport.Pool, :p},
             start: {Pyport.Pool, :start_link, [[name: :p, size: 1]]},
             shutdown: :infinity,
             restart: :permanent
           } = Pyport.Pool.child_spec(name: :p, size: 1)

    assert_raise KeyError, fn -> Pyport.Pool.child_spec(size: 1) end
  end
end
