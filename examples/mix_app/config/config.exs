import Config

# One pool of two workers; the application's own Python modules are in its
# priv/python, wherever the release puts it.
config :pyport, pools: %{default: %{size: 2, python_path: [{:priv, :mix_app, "python"}]}}

config :logger, level: :warning
