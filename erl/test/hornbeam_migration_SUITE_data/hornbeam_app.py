"""An application written against Hornbeam's documented integration API
(its hooks, erlang-integration and ML guides), used here unchanged: only
hornbeam_erlang and hornbeam_ml are imported, as a Hornbeam app does."""
import os

from hornbeam_erlang import (await_result, call, cast, execute, execute_async, publish,
                             register_hook, state_decr, state_get, state_get_multi, state_incr,
                             state_keys, state_set, stream, unregister_hook)
from hornbeam_ml import cache_stats, cached_inference


# ---- hooks (docs/guides/hooks.md)

class EmbeddingService:
    def __init__(self):
        # Called once when the hook is registered.
        self.model = {"loaded_by": os.getpid()}

    def encode(self, text):
        """Action: encode"""
        return [len(text), sum(map(ord, text)) % 1000]

    def loaded_by(self):
        return self.model["loaded_by"]


def llm_handler(action, *args, **kwargs):
    if action == "generate":
        prompt = args[0]
        return (word for word in prompt.split())
    if action == "options":
        return kwargs
    raise ValueError(f"Unknown action: {action}")


def lifespan_startup():
    register_hook("embeddings", EmbeddingService)
    register_hook("llm", llm_handler)
    return os.getpid()


def lifespan_shutdown():
    unregister_hook("embeddings")
    unregister_hook("llm")
    return True


def embed_view(text):
    return {"embedding": execute("embeddings", "encode", text),
            "model_in": execute("embeddings", "loaded_by")}


def generate_view(prompt):
    return "".join(f"{chunk}|" for chunk in stream("llm", "generate", prompt))


def options_view():
    return execute("llm", "options", temperature=0.5)


def background_view(text):
    task_id = execute_async("embeddings", "encode", text)
    return await_result(task_id, timeout_ms=10000)


def auth_view(token):
    # An Erlang hook (hornbeam_hooks:reg/2), as in the guide.
    try:
        return {"user": execute("auth", "verify_token", token)}
    except Exception:
        return {"error": "Unauthorized"}


def bad_action():
    try:
        execute("llm", "nope")
        return None
    except RuntimeError as e:
        return str(e)


# ---- shared state (docs/guides/erlang-integration.md)

def check_rate_limit(user_id, limit=3):
    count = state_incr(f"rate:{user_id}")
    return count <= limit


def track_request(path, status):
    state_incr(f"metrics:requests:{path}")
    state_incr(f"metrics:status:{status}")
    return sorted(state_keys("metrics:"))


def spend_quota(n):
    return state_decr("quota", n)


def get_product(product_id):
    cached = state_get(f"product:{product_id}")
    if cached:
        return cached
    product = {"id": product_id, "fetched_by": os.getpid()}
    state_set(f"product:{product_id}", product)
    return product


def users(ids):
    return state_get_multi([f"user:{i}" for i in ids])


# ---- pub/sub

def update_product(product_id, data):
    state_set(f"product:{product_id}", data)
    return publish(f"product:{product_id}", {"type": "updated", "product_id": product_id,
                                             "data": data})


# ---- registered functions

def login(token):
    try:
        user_id = call("validate_token", token)
        return {"user": user_id}
    except Exception:
        return {"error": "Invalid token"}


def feature(name, user_id):
    return call("feature_enabled", name, user_id)


def log_login(user_id):
    cast("log_event", "user_login", {"user_id": user_id})
    return True


# ---- ML cache (docs/guides/ml-integration.md)

def _encode(text):
    state_incr("model_runs")
    return [len(text), text.upper()]


def embed_cached(text):
    return cached_inference(_encode, text)


def ml_stats():
    return cache_stats()
