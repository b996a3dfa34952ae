"""`msr cache`'s options reach the node (msr/project/cli.py `_cache_argv` builds the
environment the node reads with caches.node.Config), in-process: no node is started."""

import pytest

from caches.node import Config
from msr.project import cli

REQUIRED = ["cache", "--name", "eu", "--msr", "https://registry.example.com"]


def node_config(argv, tmp_path) -> Config:
    args = cli.build_parser().parse_args([*argv, "--data", str(tmp_path)])
    _, env = cli._cache_argv(args)
    assert all(isinstance(value, str) for value in env.values())  # an environment
    return Config(env)


def test_the_regional_endpoint_flags_reach_the_node(tmp_path):
    config = node_config([*REQUIRED, "--no-token-relay", "--public-url", "https://cache-eu.example.com/",
                          "--token-service", "registry", "--membership-ttl", "2m"], tmp_path)
    assert config.token_relay is False
    assert config.public_url == "https://cache-eu.example.com"
    assert config.token_service == "registry"
    assert config.membership_ttl == 120


def test_without_flags_the_node_gets_its_defaults(tmp_path, monkeypatch):
    for name in ("MSR_CACHE_TOKEN_RELAY", "MSR_CACHE_PUBLIC_URL", "MSR_CACHE_TOKEN_SERVICE",
                 "MSR_CACHE_MEMBERSHIP_TTL"):
        monkeypatch.delenv(name, raising=False)
    config = node_config(REQUIRED, tmp_path)
    assert config.token_relay is True
    assert config.public_url == ""  # from the request's Host
    assert config.token_service is None  # read from MSR's challenge
    assert config.membership_ttl == 600


def test_the_flags_default_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MSR_CACHE_TOKEN_RELAY", "off")
    monkeypatch.setenv("MSR_CACHE_PUBLIC_URL", "https://cache-ap.example.com")
    monkeypatch.setenv("MSR_CACHE_TOKEN_SERVICE", "msr-prod")
    monkeypatch.setenv("MSR_CACHE_MEMBERSHIP_TTL", "30s")
    config = node_config(REQUIRED, tmp_path)
    assert (config.token_relay, config.public_url, config.token_service, config.membership_ttl) == (
        False, "https://cache-ap.example.com", "msr-prod", 30)
    assert node_config([*REQUIRED, "--token-relay"], tmp_path).token_relay is True


@pytest.mark.parametrize("option,message", [
    (["--membership-ttl", "ten minutes"], "not a duration"),
    (["--public-url", "cache-eu.example.com"], "expected http(s)://host[:port]"),
])
def test_a_bad_value_stops_msr_cache_before_the_node_starts(tmp_path, monkeypatch, option, message):
    def no_exec(*args):
        raise AssertionError("the node was started")

    monkeypatch.setattr(cli.os, "execv", no_exec)
    args = cli.build_parser().parse_args([*REQUIRED, "--data", str(tmp_path), *option])
    with pytest.raises(SystemExit) as stopped:
        cli.cmd_cache(args)
    assert message in str(stopped.value)


def test_a_bad_token_relay_value_in_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("MSR_CACHE_TOKEN_RELAY", "maybe")
    with pytest.raises(SystemExit) as stopped:
        cli.build_parser()
    assert "MSR_CACHE_TOKEN_RELAY='maybe': expected true or false" in str(stopped.value)


def test_msr_ups_local_cache_is_a_regional_endpoint_with_the_defaults(tmp_path):
    argv, env = cli._cache_argv(cli._local_cache_args("127.0.0.1:5000", "127.0.0.1:5001", tmp_path / "cache"))
    config = Config(env)
    assert "127.0.0.1:5001" in argv
    assert (config.name, config.msr_url, config.token_relay, config.membership_ttl) == (
        "local", "http://127.0.0.1:5000", True, 600)
