%% @doc Makes pyport's log events visible on a node with OTP's stock
%% logger configuration.
%%
%% pyport logs in the domain `[pyport | _]' (worker output, Python
%% records, crashes, dropped-line warnings), so that users can route or
%% silence it as a whole. OTP's `default' handler, as shipped, logs only
%% events with no domain or in `[otp | _]' (its `filter_default' is
%% `stop'), so without help every pyport event would vanish from a plain
%% node or release. At start pyport adds one filter, `pyport_domain', to
%% the `default' handler, letting `[pyport | _]' through; the handler's
%% level and the user's other filters still apply. `{log_to_default_handler,
%% false}' in pyport's application environment leaves the handler alone
%% (for a logger configuration that routes the domain itself).
-module(pyport_log_domain).

-export([install/0, remove/0]).

-define(FILTER, pyport_domain).

%% @doc Adds the filter to the `default' handler, unless disabled, absent
%% or already there. Never fails the application's start.
-spec install() -> ok.
install() ->
    case application:get_env(pyport, log_to_default_handler, true) of
        true ->
            _ = logger:add_handler_filter(default, ?FILTER,
                                          {fun logger_filters:domain/2, {log, sub, [pyport]}}),
            ok;
        _ ->
            ok
    end.

%% @doc Takes the filter away again (when pyport stops).
-spec remove() -> ok.
remove() ->
    _ = logger:remove_handler_filter(default, ?FILTER),
    ok.
