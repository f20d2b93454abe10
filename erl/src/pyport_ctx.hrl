%% A context: a pid (a worker's gen_server, or a dedicated context from
%% py_context:new/1), or this record, which older pyport code got from
%% py:context/1,2.
-record(pyport_ctx, {pool :: atom(), slot :: pos_integer()}).
-define(IS_CTX(C), (is_pid(C) orelse is_record(C, pyport_ctx))).
