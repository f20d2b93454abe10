defmodule Pyport.Pool do
  @moduledoc """
  A pool of Python workers as a child of your supervision tree.

      children = [
        {Pyport.Pool, name: :ml, size: 4, python_path: ["priv/python"], imports: [:numpy]},
        MyApp.Endpoint
      ]

      Supervisor.start_link(children, strategy: :one_for_one)

  then `Pyport.call(:model, :predict, [x], pool: :ml)`. Every option but
  `:name` is a pool option of docs/configuration.md (`:size`,
  `:python_path`, `:call_timeout`, `:env`, `:imports`, `:sandbox`, ...);
  the options pyport takes as maps (`sandbox`, `grants`, `log_rate`) may be
  keyword lists: `sandbox: [max_memory: 512 * 1024 * 1024]`.

  ## How it is supervised

  `start_link/1` starts a small process that starts the pool with
  `:pyport.start_pool/2` and stays linked to your supervisor for the pool's
  life:

    * the pool itself stays one of pyport's pools, under pyport's own
      supervisors (`pyport_pools_sup` -> `pyport_pool_sup` -> workers): its
      workers restart as every pool's do, and `:pyport.pools/0`,
      `:pyport.pool_info/1` and cluster routing see it. Nothing about
      pools is done twice;
    * your tree owns its lifetime: when your supervisor stops this child
      (the application stops, or `Supervisor.terminate_child/2`) the pool is
      stopped with `:pyport.stop_pool/1` - the workers finish the requests
      they have read first - before the children started before it stop.
      Put a pool before the children that call it;
    * when the pool goes away on its own (its supervisor gave up after too
      many worker restarts, or someone called `:pyport.stop_pool/1`), this
      process exits with `{:pool_down, name, reason}`, so your supervisor's
      restart strategy decides what happens next (a restart starts the
      pool afresh).

  The child's `:shutdown` is `:infinity`, as for a supervisor: stopping the
  pool is bounded by its workers' own `shutdown_timeout`. If this process
  is killed with `Process.exit(pid, :kill)` it cannot stop the pool, which
  then keeps running until `:pyport.stop_pool/1`, and restarting the child
  fails with `{:already_started, name}`.

  The pyport application must be running (it is, when pyport is a
  dependency of your application).
  """

  use GenServer, restart: :permanent, shutdown: :infinity

  @type option ::
          {:name, atom()}
          | {:size, pos_integer()}
          | {:python_path, [Path.t()]}
          | {atom(), term()}

  @doc """
  The child spec: `{Pyport.Pool, name: :ml, size: 2}` in a children list.
  Its id is `{Pyport.Pool, name}`, so one supervisor can hold several pools.
  """
  @spec child_spec([option()]) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.fetch!(opts, :name)},
      start: {__MODULE__, :start_link, [opts]},
      restart: :permanent,
      shutdown: :infinity,
      type: :worker
    }
  end

  @doc """
  Starts the pool `opts[:name]` with the other options, linked to the
  caller. Returns `{:error, reason}` with pyport's reason when the options
  are invalid (`{:invalid_pool_option, name, key, value}`, ...), the name
  is taken (`{:already_started, name}`) or the workers cannot start
  (`{:pool_start_failed, name, why}`).

      iex> {:ok, pid} = Pyport.Pool.start_link(name: :doc_pool, size: 1)
      iex> Pyport.call(:operator, :neg, [1], pool: :doc_pool)
      {:ok, -1}
      iex> GenServer.stop(pid)
      :ok
  """
  @spec start_link([option()]) :: GenServer.on_start()
  def start_link(opts) when is_list(opts) do
    {name, pool_opts} = Keyword.pop(opts, :name)

    if is_atom(name) and name != nil do
      GenServer.start_link(__MODULE__, {name, pool_opts(pool_opts)})
    else
      {:error, {:invalid_pool_name, name}}
    end
  end

  @doc "The running pool's workers and what they are doing (`:pyport.pool_info/1`)."
  @spec info(atom()) :: {:ok, map()} | {:error, {:no_pool, atom()}}
  def info(name), do: :pyport.pool_info(name)

  @impl true
  def init({name, opts}) do
    # terminate/2 must run when the parent supervisor stops us.
    Process.flag(:trap_exit, true)

    case start_pool(name, opts) do
      {:ok, sup} -> {:ok, %{name: name, sup: sup, ref: Process.monitor(sup)}}
      {:error, reason} -> {:stop, reason}
    end
  end

  @impl true
  def handle_info({:DOWN, ref, :process, _sup, reason}, %{ref: ref, name: name} = state) do
    {:stop, {:pool_down, name, reason}, state}
  end

  def handle_info({:EXIT, _from, reason}, state), do: {:stop, reason, state}

  @impl true
  def terminate(_reason, %{name: name}) do
    # Also after :pool_down: pyport_pools_sup may have restarted the pool,
    # or keeps the entry of one that gave up; both go.
    _ = :pyport.stop_pool(name)
    :ok
  end

  defp start_pool(name, opts) do
    :pyport.start_pool(name, opts)
  catch
    :exit, {:noproc, _} -> {:error, {:pyport_not_started, name}}
  end

  # The options pyport takes as maps may be given as keyword lists.
  @map_options [:sandbox, :grants, :log_rate]

  defp pool_opts(opts) do
    Map.new(opts, fn
      {key, [{_, _} | _] = value} when key in @map_options ->
        {key, if(Keyword.keyword?(value), do: Map.new(value), else: value)}

      {key, value} ->
        {key, value}
    end)
  end
end
