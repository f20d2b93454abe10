# The ExUnit tests run against the pyport application of this checkout,
# restarted with a default pool of 2 workers that has the tests' Python
# modules (elixir/test/python) on its path.
python_dir = Path.expand("python", __DIR__)
Application.put_env(:pyport, :test_python_dir, python_dir)
_ = Application.stop(:pyport)
Application.put_env(:pyport, :pools, %{default: %{size: 2, python_path: [python_dir]}})
{:ok, _} = Application.ensure_all_started(:pyport)

# Sandboxed pools need kernel features (namespaces, seccomp, Landlock,
# cgroups) a machine may lack: the job tests run only where one starts.
exclude =
  case :pyport.start_pool(:ex_sandbox_probe, %{size: 1, sandbox: true}) do
    {:ok, _} ->
      :ok = :pyport.stop_pool(:ex_sandbox_probe)
      []

    {:error, reason} ->
      IO.puts("skipping the sandbox tests: no sandboxed pool here: #{inspect(reason)}")
      [:sandbox]
  end

# pyport logs every Python exception at debug level: the failure tests
# raise many. Elixir's Logger (for capture_log) is not one of pyport's
# applications: start it here.
{:ok, _} = Application.ensure_all_started(:logger)
Logger.configure(level: :info)
ExUnit.start(exclude: exclude)
# The workers stop before the VM does.
ExUnit.after_suite(fn _ -> Application.stop(:pyport) end)
