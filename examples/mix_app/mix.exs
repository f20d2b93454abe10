defmodule MixApp.MixProject do
  use Mix.Project

  def project do
    [
      app: :mix_app,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: deps(),
      # A release carries pyport's priv/ (the worker and the Python
      # runtime); the target needs what docs/getting-started.md lists.
      releases: [mix_app: [include_executables_for: [:unix]]]
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  # Put your pyport repository's URL (and a branch or tag) here. The test
  # (examples/mix_app/run-test) points it at the checkout under test.
  defp deps do
    [{:pyport, git: "https://git.example.org/pyport.git", branch: "main"}]
  end
end
