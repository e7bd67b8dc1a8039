"""`emovox serve --engine ray` on a busy node: Ray Serve's readiness budget, and one clear line when it still fails.
(No Ray is started here: the settings and the failure path are checked with Ray's start replaced.)"""

from __future__ import annotations

import contextlib
import types

import pytest

from emovox.cli import main

pytest.importorskip("ray", reason="the Ray engine's tests need its extra: pip install 'emovox[ray]'")


def test_ray_serve_gets_a_readiness_budget_for_a_loaded_node(monkeypatch):
    from emovox.scale import ray_serve
    from emovox.scale.options import ServeOptions
    from emovox.server import Settings

    assert float(ray_serve.READINESS_ENV["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"]) >= 30  # Ray's default: 5 s
    assert ray_serve.deployment_options(Settings(), ServeOptions())["health_check_timeout_s"] >= 60
    seen = {}

    @contextlib.contextmanager
    def session(options, *, part="", env=None):
        seen.update(env or {})
        yield types.SimpleNamespace(serve=types.SimpleNamespace(start=_died, shutdown=lambda: None))

    monkeypatch.setattr(ray_serve, "ray_session", session)
    with pytest.raises(ValueError):
        ray_serve.serve_forever(Settings(use_mock_models=True), ServeOptions(), _ray_options())
    assert seen == ray_serve.READINESS_ENV


def _ray_options():
    from emovox.scale.options import RayOptions

    return RayOptions()


def _died(**_):
    class ActorDiedError(Exception):
        pass

    raise ActorDiedError("The actor died unexpectedly before finishing this task.\n  class_name: ProxyActor\n ...")


def test_a_failed_start_is_one_line_that_says_what_did_not_start_and_what_to_try(monkeypatch, capsys):
    from emovox.scale import ray_serve

    @contextlib.contextmanager
    def session(options, *, part="", env=None):
        yield types.SimpleNamespace(serve=types.SimpleNamespace(start=_died, shutdown=lambda: None))

    monkeypatch.setattr(ray_serve, "ray_session", session)
    assert main(["serve", "--engine", "ray", "--replicas", "1", "--mock"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "Ray Serve's HTTP proxy did not start" in err[0] and "ActorDiedError" in err[0]
    assert "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S" in err[0] and "--engine uvicorn" in err[0]
