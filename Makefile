# pyport top-level commands. Each target installs what is missing first.
#   make          build everything (worker, tools, tests, the OTP app)
#   make demo     run examples/demo on a node with the default pool
#   make shell    an Erlang shell with pyport started
#   make chat     the WebSocket chat example on http://127.0.0.1:8000/
#   make test     every test of every language, through CTest
#   make bench    every benchmark, one `NAME VALUE UNIT` line each

BUILD    ?= build
REBAR    ?= rebar3
ERL_EBIN  = erl/_build/default/lib/pyport/ebin
DEMO_OUT  = $(BUILD)/examples

.PHONY: all deps build demo chat shell test bench asan clean

all: build

deps:
	@sh tools/install-deps

build: deps
	@sh tools/build-worker
	@cmake --build $(BUILD) -j2
	@cd erl && $(REBAR) compile

$(DEMO_OUT)/demo.beam: examples/demo/demo.erl
	@mkdir -p $(DEMO_OUT)
	@erlc -o $(DEMO_OUT) $<

demo: build $(DEMO_OUT)/demo.beam
	@erl -noshell -pa $(ERL_EBIN) -pa $(DEMO_OUT) \
	    -config examples/demo/sys.config -run demo main

# examples/ws_chat on its sys.config's 2-worker pool; Ctrl-C twice stops it.
chat: build
	@erl -noshell -pa $(ERL_EBIN) -config examples/ws_chat/sys.config \
	    -eval '{ok, _} = application:ensure_all_started(pyport), io:format("chat: open http://127.0.0.1:8000/#lobby in two browser windows~n")'

shell: build
	@erl -pa $(ERL_EBIN) -eval 'application:ensure_all_started(pyport)'

test: build
	@ctest --test-dir $(BUILD) --output-on-failure

bench: build
	@sh bench/run

# The worker and C++ tests under AddressSanitizer and UBSan.
asan: deps
	@cmake -S . -B $(BUILD)-asan -DPYPORT_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
	@cmake --build $(BUILD)-asan -j2
	@ctest --test-dir $(BUILD)-asan --output-on-failure -R 'cpp_unit|python_harness'

clean:
	rm -rf $(BUILD) $(BUILD)-asan erl/_build erl/priv/pyport_worker erl/priv/echo_port erl/priv/python_runtime
