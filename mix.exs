defmodule Pyport.MixProject do
  # pyport as a mix project and dependency:
  #   {:pyport, git: url, branch: "main"}
  # The OTP application (erl/src, described by erl/src/pyport.app.src) plus
  # the Elixir API (elixir/lib); compiling builds the C++ worker and copies
  # the Python runtime into priv/ (tools/build-worker).
  use Mix.Project

  # The application's description lives once, in pyport.app.src (rebar3
  # reads it too): mix takes its version, mod, env and registered names.
  @app_src Path.join(__DIR__, "erl/src/pyport.app.src")
  @external_resource @app_src
  {:ok, [{:application, :pyport, app}]} = :file.consult(@app_src)
  @app app

  def project do
    [
      app: :pyport,
      version: List.to_string(@app[:vsn]),
      description: List.to_string(@app[:description]),
      elixir: "~> 1.14",
      erlc_paths: ["erl/src"],
      erlc_include_path: "erl/include",
      elixirc_paths: ["elixir/lib"],
      test_paths: ["elixir/test"],
      compilers: Mix.compilers() ++ [:pyport_worker],
      deps: []
    ]
  end

  def application do
    [
      mod: @app[:mod],
      env: @app[:env],
      registered: @app[:registered],
      extra_applications: @app[:applications] -- [:kernel, :stdlib]
    ]
  end
end

defmodule Mix.Tasks.Compile.PyportWorker do
  @moduledoc "Builds pyport_worker and copies the Python runtime into priv/."
  use Mix.Task.Compiler

  # What the worker and the runtime copy are built from.
  @sources ~w(CMakeLists.txt tools/build-worker port_worker proto python_runtime)

  @impl true
  def run(_args) do
    root = Path.dirname(Mix.Project.project_file())
    priv = Path.join(root, "priv")
    sources = Enum.flat_map(@sources, &files(Path.join(root, &1)))
    targets = [Path.join(priv, "pyport_worker"), Path.join(priv, "python_runtime")]

    if Mix.Utils.stale?(sources, [manifest()]) or not Enum.all?(targets, &File.exists?/1) do
      build(root, priv)
    else
      {:noop, []}
    end
  end

  @impl true
  def manifests, do: [manifest()]

  @impl true
  def clean, do: File.rm(manifest())

  defp manifest, do: Path.join(Mix.Project.manifest_path(), "compile.pyport_worker")

  defp files(path) do
    if File.dir?(path),
      do: Path.join(path, "**/*") |> Path.wildcard() |> Enum.reject(&(&1 =~ "__pycache__")),
      else: [path]
  end

  defp build(root, priv) do
    case System.cmd("sh", [Path.join(root, "tools/build-worker"), "--dependency", priv],
           into: IO.stream(:stdio, :line),
           stderr_to_stdout: true
         ) do
      {_, 0} ->
        # priv/ may be new: link it into _build now (mix does it only
        # before the compilers run).
        Mix.Project.build_structure()
        File.mkdir_p!(Path.dirname(manifest()))
        File.touch!(manifest())
        {:ok, []}

      {_, status} ->
        Mix.raise("pyport: tools/build-worker failed (exit status #{status})")
    end
  end
end
