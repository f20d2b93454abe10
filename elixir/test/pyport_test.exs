defmodule PyportTest do
  # Calls share the default pool; the timeout test leaves a worker busy
  # being interrupted, so the cases run one at a time.
  use ExUnit.Case, async: false

  doctest Pyport
  doctest Pyport.Convert
  doctest Pyport.Error

  defmodule User do
    defstruct [:name, :born, tags: []]
  end

  describe "call/4" do
    test "returns {:ok, value}" do
      assert {:ok, 4.0} = Pyport.call(:math, :sqrt, [16])
      assert {:ok, "a-b"} = Pyport.call("builtins", "str.join", ["-", ["a", "b"]])
      assert {:ok, "a/b"} = Pyport.call(:"os.path", ~c"join", ["a", "b"])
    end

    test "kwargs as a keyword list or a map" do
      assert {:ok, [[1], %{"sep" => "x", "n" => 2}]} =
               Pyport.call(:ex_helpers, :echo, [1], kwargs: [sep: "x", n: 2])

      assert {:ok, [[], %{"sep" => "y"}]} =
               Pyport.call(:ex_helpers, :echo, [], kwargs: %{"sep" => "y"})

      # The first value of a repeated key wins, as Keyword.get/2 reads it.
      assert {:ok, [[], %{"n" => 1}]} = Pyport.call(:ex_helpers, :echo, [], kwargs: [n: 1, n: 2])
    end

    test "bad kwargs, args and options are refused, naming the problem" do
      assert {:error, %Pyport.Error{reason: {:invalid_kwargs, [1, 2]}, type: nil} = e} =
               Pyport.call(:ex_helpers, :echo, [], kwargs: [1, 2])

      assert Exception.message(e) =~ "kwargs must be a keyword list or a map"

      assert {:error, %Pyport.Error{reason: {:invalid_args, :nope}}} =
               Pyport.call(:ex_helpers, :echo, :nope)

      assert {:error, %Pyport.Error{reason: {:bad_option, :bogus}} = e} =
               Pyport.call(:math, :sqrt, [4], bogus: 1)

      assert Exception.message(e) == "unknown option: :bogus"

      assert {:error, %Pyport.Error{reason: {:invalid_option, :timeout, -1}}} =
               Pyport.call(:math, :sqrt, [4], timeout: -1)

      assert {:error, %Pyport.Error{reason: {:no_pool, :no_such_pool}}} =
               Pyport.call(:math, :sqrt, [4], pool: :no_such_pool)

      assert {:error, %Pyport.Error{reason: {:invalid_option, :context, :ctx}}} =
               Pyport.call(:math, :sqrt, [4], context: :ctx)
    end

    test "a Python exception is {:error, %Pyport.Error{}} with its type and message" do
      assert {:error, %Pyport.Error{type: "AppError", message: "boom"} = e} =
               Pyport.call(:ex_helpers, :fail, ["boom"])

      assert e.reason == {:AppError, "boom"}
      assert Exception.message(e) == "AppError: boom"
    end

    test "an unknown module or function" do
      assert {:error, %Pyport.Error{type: "ModuleNotFoundError", message: msg}} =
               Pyport.call(:no_such_module_ex, :f, [])

      assert msg =~ "no_such_module_ex"

      assert {:error, %Pyport.Error{type: "AttributeError"}} =
               Pyport.call(:math, :no_such_function, [])
    end

    test "a timeout interrupts the Python code and answers :timeout" do
      started = System.monotonic_time(:millisecond)

      assert {:error, %Pyport.Error{type: nil, reason: :timeout} = e} =
               Pyport.call(:ex_helpers, :slow, [60, :late], timeout: 200)

      # Rules out waiting for the 60 s sleep, with room for a loaded machine.
      assert System.monotonic_time(:millisecond) - started < 30_000
      assert Exception.message(e) =~ "timeout"
      # The pool still serves.
      assert {:ok, 3} = Pyport.call(:operator, :add, [1, 2])
    end

    test "call! returns the value or raises Pyport.Error" do
      assert Pyport.call!(:operator, :add, [40, 2]) == 42

      error =
        assert_raise Pyport.Error, "ZeroDivisionError: division by zero", fn ->
          Pyport.call!(:operator, :truediv, [1, 0])
        end

      assert error.reason == {:ZeroDivisionError, "division by zero"}

      assert_raise Pyport.Error, ~r/unknown option: :bogus/, fn ->
        Pyport.call!(:math, :sqrt, [4], bogus: true)
      end
    end
  end

  describe "conversion" do
    test "strings, charlists, nil, atoms, tuples" do
      assert {:ok, ["str", "abc"]} = Pyport.call(:ex_helpers, :describe, ["abc"])
      assert {:ok, ["list", ~c"abc"]} = Pyport.call(:ex_helpers, :describe, [~c"abc"])
      assert {:ok, ["NoneType", nil]} = Pyport.call(:ex_helpers, :describe, [nil])
      assert {:ok, ["bool", true]} = Pyport.call(:ex_helpers, :describe, [true])
      assert {:ok, ["Atom", :ok]} = Pyport.call(:ex_helpers, :describe, [:ok])
      assert {:ok, ["Atom", Pyport]} = Pyport.call(:ex_helpers, :describe, [Pyport])
      assert {:ok, ["tuple", {1, "a"}]} = Pyport.call(:ex_helpers, :describe, [{1, "a"}])
      assert {:ok, ["bytes", "abc"]} = Pyport.call(:ex_helpers, :describe, [{:bytes, "abc"}])
      # None comes back as nil at any depth.
      assert {:ok, %{"a" => [nil, {nil}]}} = Pyport.eval("{'a': [None, (None,)]}")
    end

    test "structs: calendar types as ISO 8601, MapSet as a list, others as maps" do
      assert {:ok, ["str", "2024-02-29"]} = Pyport.call(:ex_helpers, :describe, [~D[2024-02-29]])

      # Python parses them back.
      :ok = Pyport.exec("import datetime")

      assert {:ok, "2024-02-29T12:30:00"} =
               Pyport.eval("datetime.datetime.fromisoformat(d).isoformat()",
                 locals: [d: ~N[2024-02-29 12:30:00]]
               )

      assert {:ok, ["str", "2024-02-29T12:30:00Z"]} =
               Pyport.call(:ex_helpers, :describe, [~U[2024-02-29 12:30:00Z]])

      assert {:ok, ["list", [1]]} = Pyport.call(:ex_helpers, :describe, [MapSet.new([1])])

      user = %User{name: "ada", born: ~D[1815-12-10], tags: [:math]}

      assert {:ok, ["dict", ["born", "name", "tags"]]} =
               Pyport.call(:ex_helpers, :describe, [user])

      assert {:ok, %{"born" => "1815-12-10", "name" => "ada", "tags" => [:math]}} =
               Pyport.eval("{str(k): v for k, v in u.items()}", locals: [u: user])

      # A struct's fields as keyword arguments.
      assert {:ok, [[], %{"name" => "ada", "born" => "1815-12-10", "tags" => [:math]}]} =
               Pyport.call(:ex_helpers, :echo, [], kwargs: user)

      # In kwargs and locals too.
      assert {:ok, [[], %{"when" => "2024-01-01"}]} =
               Pyport.call(:ex_helpers, :echo, [], kwargs: [when: ~D[2024-01-01]])
    end

    test "an improper list is refused with pyport's reason" do
      assert {:error, %Pyport.Error{reason: {:unsupported_term, _}}} =
               Pyport.call(:ex_helpers, :describe, [[1 | 2]])
    end
  end

  describe "eval and exec" do
    test "exec defines names the same process's eval sees; another process does not" do
      assert :ok = Pyport.exec("ex_counter = 41")
      assert {:ok, 42} = Pyport.eval("ex_counter + 1")

      other = Task.async(fn -> Pyport.eval("ex_counter") end) |> Task.await()
      assert {:error, %Pyport.Error{type: "NameError"}} = other
    end

    test "locals as a keyword list or a map; bad locals refused" do
      assert {:ok, 11} = Pyport.eval("a + b", locals: [a: 5, b: 6])
      assert {:ok, 11} = Pyport.eval("a + b", locals: %{"a" => 5, "b" => 6})

      assert {:error, %Pyport.Error{reason: {:invalid_option, :locals, 5}}} =
               Pyport.eval("1", locals: 5)
    end

    test "errors and the bang versions" do
      assert {:error, %Pyport.Error{type: "SyntaxError"}} = Pyport.eval("1 +")
      assert {:error, %Pyport.Error{type: "NameError"}} = Pyport.exec("undefined_name_ex")
      assert Pyport.eval!("6 * 7") == 42
      assert Pyport.exec!("ex_x = 1") == :ok
      assert_raise Pyport.Error, ~r/^SyntaxError: /, fn -> Pyport.eval!("1 +") end

      assert_raise Pyport.Error, ~r/^ValueError: v/, fn ->
        Pyport.exec!("raise ValueError('v')")
      end
    end

    test "a context is one worker's shared globals, for every process" do
      ctx = Pyport.context(2)
      assert :ok = Pyport.exec("ex_shared = 'two'", context: ctx)

      assert {:ok, "two!"} =
               Task.async(fn -> Pyport.eval("ex_shared + s", context: ctx, locals: [s: "!"]) end)
               |> Task.await()

      assert {:ok, pid} = Pyport.call(:ex_helpers, :getpid, [], context: ctx)

      assert {:ok, ^pid} =
               Pyport.call(:ex_helpers, :getpid, [], context: Pyport.context(:default, 2))
    end
  end

  describe "cast, spawn_call, await, bind" do
    test "cast sends; a later call to the same worker sees its effect" do
      # Bound: the cast and the call go to one worker, in order.
      :ok = Pyport.bind()
      value = System.unique_integer([:positive])
      assert :ok = Pyport.cast(:ex_helpers, :record, [value])
      assert {:ok, recorded} = Pyport.call(:ex_helpers, :recorded, [])
      assert value in recorded
      :ok = Pyport.unbind()

      assert {:error, %Pyport.Error{reason: {:bad_option, :bogus}}} =
               Pyport.cast(:ex_helpers, :echo, [], bogus: 1)
    end

    test "spawn_call and await, and await's own timeout" do
      handle = Pyport.spawn_call(:operator, :mul, [6, 7])
      assert {:ok, 42} = Pyport.await(handle)

      handle = Pyport.spawn_call(:ex_helpers, :echo, [1], kwargs: [k: nil])
      assert Pyport.await!(handle) == [[1], %{"k" => nil}]

      handle = Pyport.spawn_call(:ex_helpers, :slow, [60, :late])
      assert {:error, %Pyport.Error{reason: :timeout}} = Pyport.await(handle, 100)
    end

    test "interrupt raises KeyboardInterrupt in the call" do
      handle = Pyport.spawn_call(:ex_helpers, :slow, [60, :late], timeout: 30_000)
      # Let it start in the worker, then interrupt it.
      Process.sleep(200)
      assert :ok = Pyport.interrupt(handle)
      assert {:error, %Pyport.Error{type: "KeyboardInterrupt"}} = Pyport.await(handle)
    end

    test "bind pins the process to one worker" do
      assert :ok = Pyport.bind()
      {:ok, pid} = Pyport.call(:ex_helpers, :getpid, [])

      for _ <- 1..5 do
        assert {:ok, ^pid} = Pyport.call(:ex_helpers, :getpid, [])
      end

      assert :ok = Pyport.unbind()
      assert {:error, %Pyport.Error{reason: {:no_pool, :nope}}} = Pyport.bind(:nope)
    end
  end
end
