"""Settings: CLI flag > EMBER_* environment > default; bad values name the setting."""
import pytest

from ember.settings import Settings, env_name, from_sources


def test_precedence_cli_over_env_over_default():
    env = {"EMBER_PORT": "6000", "EMBER_PROVIDERS": "cuda,cpu", "EMBER_REFLECTION": "false",
           "EMBER_MAX_BATCH_TOKENS": "4096"}
    s = from_sources({"port": 7000, "providers": None}, env)
    assert s.port == 7000  # CLI wins
    assert s.providers == ("cuda", "cpu") and s.reflection is False and s.max_batch_tokens == 4096  # env
    assert s.max_inputs_per_request == 1024 and s.inference_workers == 0  # defaults
    assert from_sources({}, {}) == Settings()


@pytest.mark.parametrize("env,needle", [
    ({"EMBER_PORT": "http"}, "port"),
    ({"EMBER_REFLECTION": "maybe"}, "EMBER_REFLECTION"),
    ({"EMBER_INFERENCE_WORKERS": "-1"}, "inference_workers"),
    ({"EMBER_LOG_LEVEL": "loud"}, "log_level"),
    ({"EMBER_PIN_THREADS": "sometimes"}, "pin_threads"),
    ({"EMBER_INLINE_ALONE_MS": "-1"}, r"inline_alone_ms .*must be >= 0"),
])
def test_bad_values_name_the_setting(env, needle):
    with pytest.raises(ValueError, match=needle):
        from_sources({}, env)


def test_every_setting_has_an_env_twin_and_help():
    import dataclasses

    for f in dataclasses.fields(Settings):
        if not f.metadata.get("cli", True):
            continue  # model_configs: only the TOML file's [models.NAME] tables set it
        assert env_name(f.name) == "EMBER_" + f.name.upper()
        assert f.metadata.get("help"), f.name


def test_toml_file_sits_between_the_environment_and_the_defaults(tmp_path):
    cfg = tmp_path / "ember.toml"
    cfg.write_text('port = 5000\nmax_batch_tokens = 2048\nproviders = ["cpu"]\nbreaker_recovery_seconds = 60\n'
                   '[models.a]\nmax_tokens = 100\nprompts = { query = "q: " }\n'
                   '[models.b]\npath = "."\nproviders = ["cuda", "cpu"]\nmax_batch_tokens = 512\ndtype = "int8"\n')
    s = from_sources({"config": str(cfg), "port": 7000}, {"EMBER_MAX_BATCH_TOKENS": "4096"})
    assert s.port == 7000 and s.max_batch_tokens == 4096  # flag and env win over the file
    assert s.providers == ("cpu",) and s.breaker_recovery_seconds == 60.0  # from the file
    a, b = s.model_configs
    assert (a.name, a.max_tokens, a.prompts, a.path) == ("a", 100, (("query", "q: "),), "")
    assert (b.path, b.providers, b.max_batch_tokens, b.dtype) == (str(tmp_path), ("cuda", "cpu"), 512, "int8")
    assert from_sources({}, {"EMBER_CONFIG": str(cfg)}).port == 5000  # named by the environment too


@pytest.mark.parametrize("text,needle", [
    ("colour = 3\n", "invalid setting colour"),
    ("port = 'x'\n", "invalid setting port"),
    ("[models.a]\nbatch = 3\n", "invalid setting models.a.batch"),
    ("[models.a]\nproviders = ['tpu']\n", "invalid setting models.a.providers"),
    ("[models.a]\nmax_tokens = -1\n", "invalid setting models.a.max_tokens"),
    ("[models.a]\npath = 'nowhere'\n", "invalid setting models.a.path"),
    ("port = [\n", "cannot read"),
])
def test_bad_toml_names_the_setting(tmp_path, text, needle):
    cfg = tmp_path / "ember.toml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=needle):
        from_sources({"config": str(cfg)}, {})
