"""Settings: CLI flag > EMBER_* environment > default; bad values name the setting."""
import pytest

from ember.settings import Settings, env_name, from_sources


def test_precedence_cli_over_env_over_default():
    env = {"EMBER_PORT": "6000", "EMBER_PROVIDERS": "cuda,cpu", "EMBER_REFLECTION": "false",
           "EMBER_MAX_BATCH_TOKENS": "4096"}
    s = from_sources({"port": 7000, "providers": None}, env)
    assert s.port == 7000  # CLI wins
    assert s.providers == ("cuda", "cpu") and s.reflection is False and s.max_batch_tokens == 4096  # env
    assert s.max_inputs_per_request == 1024 and s.inference_workers == 1  # defaults
    assert from_sources({}, {}) == Settings()


@pytest.mark.parametrize("env,needle", [
    ({"EMBER_PORT": "http"}, "port"),
    ({"EMBER_REFLECTION": "maybe"}, "EMBER_REFLECTION"),
    ({"EMBER_INFERENCE_WORKERS": "0"}, "inference_workers"),
    ({"EMBER_LOG_LEVEL": "loud"}, "log_level"),
])
def test_bad_values_name_the_setting(env, needle):
    with pytest.raises(ValueError, match=needle):
        from_sources({}, env)


def test_every_setting_has_an_env_twin_and_help():
    import dataclasses

    for f in dataclasses.fields(Settings):
        assert env_name(f.name) == "EMBER_" + f.name.upper()
        assert f.metadata.get("help"), f.name
