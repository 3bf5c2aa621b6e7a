"""Unit tests for connnode.settings (PROTOCOL.md section 9)."""
import socket

import pytest

from connnode import settings as settings_module
from connnode.settings import OPTIONS, Settings, SettingsError


@pytest.fixture(autouse=True)
def fixed_hostname(monkeypatch):
    """The machine's host name is whatever the test box says: pin it."""
    monkeypatch.setattr(socket, "gethostname", lambda: "box.example")


def write_ini(tmp_path, body, name="connnode.ini"):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return str(path)


def load(environ=None, config_path=None):
    """Settings.load with an explicit environ, never the real one."""
    return Settings.load(environ={} if environ is None else environ, config_path=config_path)


def settings_error(**overrides):
    with pytest.raises(SettingsError) as info:
        Settings(**overrides)
    return str(info.value)


# -- defaults (PROTOCOL.md 9.1, 9.2, 9.3) ----------------------------------------

EXPECTED_DEFAULTS = {
    # 9.1
    "key_hash": "",
    "router_tablename": "router",
    "message_tablename": "message",
    "router_read_throughput": 5,
    "router_write_throughput": 5,
    "message_read_throughput": 5,
    "message_write_throughput": 5,
    "aws_ddb_endpoint": None,
    "data_dir": "./var",
    "embedded_ddb_port": 4567,
    "aws_region": "us-east-1",
    "max_ttl": 2592000,
    "env": "development",
    "statsd_host": "localhost",
    "statsd_port": 8125,
    "statsd_prefix": "",
    "router_connect_timeout": 0.5,
    "router_request_timeout": 3.0,
    "table_rotation_interval": 60,
    # 9.2
    "port": 8080,
    "router_port": 8100,
    "router_url": None,
    "hello_timeout": 10,
    "idle_timeout": 0,
    "auto_ping_interval": 300,
    "auto_ping_timeout": 4,
    "min_ping_interval": 55,
    "msg_limit": 100,
    "max_connections": 0,
    "max_frame_bytes": 65536,
    "open_handshake_timeout": 5,
    "close_handshake_timeout": 0,
    "send_high_water": 65536,
    "backdoor_port": None,
    "backdoor_host": "127.0.0.1",
    # 9.3
    "endpoint_port": 8082,
    "max_data_bytes": 5630,
    "cors": True,
    "sts_max_age": 31536000,
}


@pytest.mark.parametrize("name,expected", sorted(EXPECTED_DEFAULTS.items()))
def test_default_matches_protocol(name, expected):
    assert getattr(Settings(), name) == expected


@pytest.mark.parametrize("name,expected", sorted(EXPECTED_DEFAULTS.items()))
def test_load_without_file_or_env_gives_defaults(name, expected):
    assert getattr(load(), name) == expected


def test_every_protocol_option_exists():
    # every option of the section 9 tables is known (derived/unset ones too);
    # ddb_max_pool_connections is an implementation extra not in the tables
    derived_or_unset = {"crypto_key", "endpoint_url", "hostname", "router_hostname"}
    protocol = set(EXPECTED_DEFAULTS) | derived_or_unset
    assert protocol <= set(OPTIONS)
    assert set(OPTIONS) - protocol == {"ddb_max_pool_connections", "ddb_call_timeout",
                                       "hello_storage_timeout",
                                       "ddb_lean_calls", "wire_http_calls",
                                       "durable_direct", "sweep_interval",
                                       "megaphone_api_url", "megaphone_api_token",
                                       "megaphone_poll_interval", "broadcast_tablename",
                                       "megaphone_broadcaster_tokens", "megaphone_reader_token",
                                       "rate_limit_ip_rate", "rate_limit_ip_burst",
                                       "rate_limit_key_rate", "rate_limit_key_burst",
                                       "rate_limit_subscription_rate",
                                       "rate_limit_subscription_burst", "rate_limit_max_buckets",
                                       "trusted_proxies", "dead_subscription_ttl",
                                       "dead_subscription_max_entries",
                                       "tracking_keys", "track_all",
                                       "demo_page"}


def test_crypto_key_unset_by_default():
    conf = Settings()
    assert conf.crypto_key is None
    assert conf.crypto_keys == []


def test_cors_default_is_a_real_bool():
    assert Settings().cors is True


def test_derived_hostname_defaults():
    conf = Settings()
    assert conf.hostname == "box.example"
    assert conf.router_hostname == "box.example"
    assert conf.endpoint_url == "http://box.example:8082"


def test_as_dict_lists_every_option():
    conf = Settings(hostname="h")
    assert set(conf.as_dict()) == set(OPTIONS)
    assert conf.as_dict()["msg_limit"] == 100


def test_unknown_keyword_override_rejected():
    message = settings_error(msg_limitt="3")
    assert "msg_limitt" in message


def test_string_overrides_are_parsed():
    conf = Settings(msg_limit="20", cors="no", hello_timeout="2.5", port="9000")
    assert conf.msg_limit == 20
    assert conf.cors is False
    assert conf.hello_timeout == 2.5
    assert conf.port == 9000


# -- layering: defaults < ini < environment -----------------------------------------

def test_ini_overrides_default(tmp_path):
    path = write_ini(tmp_path, "[connnode]\nmsg_limit = 20\nenv = staging\ncors = false\n")
    conf = load(config_path=path)
    assert conf.msg_limit == 20
    assert conf.env == "staging"
    assert conf.cors is False
    assert conf.max_ttl == 2592000  # untouched options keep their default


def test_env_overrides_ini(tmp_path):
    path = write_ini(tmp_path, "[connnode]\nmsg_limit = 20\nenv = staging\n")
    conf = load(environ={"CONNNODE_MSG_LIMIT": "30"}, config_path=path)
    assert conf.msg_limit == 30
    assert conf.env == "staging"


def test_env_overrides_default_without_ini():
    conf = load(environ={"CONNNODE_MSG_LIMIT": "20", "CONNNODE_CORS": "off",
                         "CONNNODE_STATSD_HOST": ""})
    assert conf.msg_limit == 20
    assert conf.cors is False
    assert conf.statsd_host == ""


def test_config_env_variable_names_the_ini(tmp_path):
    path = write_ini(tmp_path, "[connnode]\nrouter_port = 9100\n")
    conf = load(environ={"CONNNODE_CONFIG": path})
    assert conf.router_port == 9100


def test_config_env_variable_with_env_override(tmp_path):
    path = write_ini(tmp_path, "[connnode]\nrouter_port = 9100\nport = 9080\n")
    conf = load(environ={"CONNNODE_CONFIG": path, "CONNNODE_PORT": "7080"})
    assert conf.router_port == 9100
    assert conf.port == 7080


def test_ini_without_connnode_section_changes_nothing(tmp_path):
    path = write_ini(tmp_path, "[other]\nmsg_limit = 20\n")
    assert load(config_path=path).msg_limit == 100


def test_ini_option_names_are_case_insensitive(tmp_path):
    path = write_ini(tmp_path, "[connnode]\nMSG_LIMIT = 7\n")
    assert load(config_path=path).msg_limit == 7


def test_unrelated_environment_ignored():
    conf = load(environ={"CONNNODE_NOT_AN_OPTION": "1", "MSG_LIMIT": "3", "PATH": "/bin"})
    assert conf.msg_limit == 100


def test_load_reads_os_environ_when_no_mapping_given(monkeypatch):
    monkeypatch.delenv("CONNNODE_CONFIG", raising=False)
    for name in OPTIONS:
        monkeypatch.delenv("CONNNODE_" + name.upper(), raising=False)
    monkeypatch.setenv("CONNNODE_MSG_LIMIT", "12")
    assert Settings.load().msg_limit == 12


def test_unknown_ini_option_rejected(tmp_path):
    path = write_ini(tmp_path, "[connnode]\nmsg_limit = 20\nmsg_limt = 3\n")
    with pytest.raises(SettingsError) as info:
        load(config_path=path)
    assert "msg_limt" in str(info.value)


def test_missing_ini_file_rejected(tmp_path):
    path = str(tmp_path / "nope.ini")
    with pytest.raises(SettingsError) as info:
        load(config_path=path)
    assert "nope.ini" in str(info.value)


def test_missing_ini_file_from_env_rejected(tmp_path):
    path = str(tmp_path / "nope.ini")
    with pytest.raises(SettingsError):
        load(environ={"CONNNODE_CONFIG": path})


def test_malformed_ini_file_rejected(tmp_path):
    path = write_ini(tmp_path, "this is not an ini file\n")
    with pytest.raises(SettingsError):
        load(config_path=path)


def test_bad_value_in_ini_names_option_and_value(tmp_path):
    path = write_ini(tmp_path, "[connnode]\nmsg_limit = lots\n")
    with pytest.raises(SettingsError) as info:
        load(config_path=path)
    assert "msg_limit" in str(info.value)
    assert "lots" in str(info.value)


# -- malformed values ---------------------------------------------------------------

MALFORMED = [
    # (option, bad text): int
    ("msg_limit", "abc"),
    ("msg_limit", "1.5"),
    ("max_ttl", "thirty days"),
    ("max_frame_bytes", ""),
    # port
    ("port", "0"),
    ("router_port", "65536"),
    ("endpoint_port", "eighty"),
    ("statsd_port", "-5"),
    ("backdoor_port", "99999"),
    # bool
    ("cors", "maybe"),
    ("cors", "2"),
    # URL
    ("endpoint_url", "ftp://push.example"),
    ("endpoint_url", "push.example"),
    ("aws_ddb_endpoint", "localhost:4567"),
    ("router_url", "http://"),
    # negative
    ("msg_limit", "-1"),
    ("max_ttl", "-3600"),
    ("hello_timeout", "-0.5"),
    ("sts_max_age", "-1"),
    # float duration
    ("auto_ping_interval", "five minutes"),
]


@pytest.mark.parametrize("name,text", MALFORMED)
def test_malformed_env_value_names_option_and_value(name, text):
    with pytest.raises(SettingsError) as info:
        load(environ={"CONNNODE_" + name.upper(): text})
    message = str(info.value)
    assert name in message
    assert repr(text) in message  # the bad value, quoted (so "" is visible too)


@pytest.mark.parametrize("name,text", MALFORMED)
def test_malformed_override_names_option_and_value(name, text):
    message = settings_error(**{name: text})
    assert name in message
    assert repr(text) in message


def test_settings_error_is_a_value_error():
    assert issubclass(SettingsError, ValueError)


@pytest.mark.parametrize("text,expected", [
    ("true", True), ("1", True), ("YES", True), (" on ", True),
    ("false", False), ("0", False), ("No", False), ("off", False),
])
def test_bool_spellings(text, expected):
    assert load(environ={"CONNNODE_CORS": text}).cors is expected


def test_zero_is_a_valid_count_and_duration():
    conf = load(environ={"CONNNODE_STS_MAX_AGE": "0", "CONNNODE_HELLO_TIMEOUT": "0"})
    assert conf.sts_max_age == 0
    assert conf.hello_timeout == 0


def test_port_bounds_accepted():
    conf = load(environ={"CONNNODE_PORT": "1", "CONNNODE_ROUTER_PORT": "65535"})
    assert conf.port == 1
    assert conf.router_port == 65535


def test_values_are_stripped():
    conf = load(environ={"CONNNODE_MSG_LIMIT": " 20 ", "CONNNODE_ENV": " prod "})
    assert conf.msg_limit == 20
    assert conf.env == "prod"


def test_empty_value_of_unset_option_stays_unset():
    conf = load(environ={"CONNNODE_BACKDOOR_PORT": "", "CONNNODE_AWS_DDB_ENDPOINT": " "})
    assert conf.backdoor_port is None
    assert conf.aws_ddb_endpoint is None


@pytest.mark.parametrize("name", ["aws_ddb_endpoint", "router_url"])
def test_url_with_bad_port_rejected(name):
    message = settings_error(**{name: "http://db.example:45x7"})
    assert name in message
    assert "http://db.example:45x7" in message


def test_endpoint_url_with_bad_port_names_option():
    message = settings_error(endpoint_url="http://push.example:99999")
    assert "endpoint_url" in message
    assert "http://push.example:99999" in message


def test_nan_duration_rejected():
    message = settings_error(hello_timeout="nan")
    assert "hello_timeout" in message
    assert "nan" in message


# -- derived defaults ----------------------------------------------------------------

def test_endpoint_url_from_hostname_and_port():
    conf = Settings(hostname="push.example", endpoint_port="9000")
    assert conf.endpoint_url == "http://push.example:9000"


def test_endpoint_url_drops_default_http_port():
    conf = Settings(hostname="push.example", endpoint_port=80)
    assert conf.endpoint_url == "http://push.example"


def test_endpoint_url_from_env_hostname_and_port():
    conf = load(environ={"CONNNODE_HOSTNAME": "push.example", "CONNNODE_ENDPOINT_PORT": "80"})
    assert conf.endpoint_url == "http://push.example"


def test_explicit_endpoint_url_kept_without_trailing_slash():
    conf = Settings(hostname="h", endpoint_url="https://updates.example/")
    assert conf.endpoint_url == "https://updates.example"


def test_explicit_endpoint_url_drops_default_https_port():
    conf = Settings(hostname="h", endpoint_url="https://updates.example:443")
    assert conf.endpoint_url == "https://updates.example"


def test_explicit_endpoint_url_keeps_non_default_port():
    conf = Settings(hostname="h", endpoint_url="https://updates.example:80")
    assert conf.endpoint_url == "https://updates.example:80"


def test_explicit_endpoint_url_beats_hostname():
    conf = load(environ={"CONNNODE_HOSTNAME": "a.example",
                         "CONNNODE_ENDPOINT_URL": "https://b.example"})
    assert conf.endpoint_url == "https://b.example"


def test_router_hostname_defaults_to_hostname():
    assert Settings(hostname="cn1.internal").router_hostname == "cn1.internal"
    conf = Settings(hostname="cn1.internal", router_hostname="10.0.0.5")
    assert conf.router_hostname == "10.0.0.5"


def test_router_url_for_port():
    conf = Settings(hostname="cn1.internal")
    assert conf.router_url_for(8100) == "http://cn1.internal:8100"
    assert conf.router_url_for(8101) == "http://cn1.internal:8101"


def test_router_url_for_uses_router_hostname():
    conf = Settings(hostname="cn1.internal", router_hostname="10.0.0.5")
    assert conf.router_url_for(8100) == "http://10.0.0.5:8100"


def test_router_url_for_drops_port_80():
    assert Settings(hostname="cn1").router_url_for(80) == "http://cn1"


def test_router_url_for_explicit_router_url():
    conf = Settings(hostname="cn1", router_url="http://router.example:9000/")
    assert conf.router_url_for(8100) == "http://router.example:9000"


# -- crypto_keys -----------------------------------------------------------------------

def test_crypto_keys_single():
    assert Settings(crypto_key="k1=").crypto_keys == ["k1="]


def test_crypto_keys_split_and_stripped():
    conf = Settings(crypto_key=" k1= , k2=,k3= ,, ")
    assert conf.crypto_keys == ["k1=", "k2=", "k3="]


def test_crypto_keys_from_env_keep_order():
    conf = load(environ={"CONNNODE_CRYPTO_KEY": "new=, old="})
    assert conf.crypto_keys == ["new=", "old="]


def test_crypto_keys_empty_string():
    assert Settings(crypto_key="").crypto_keys == []
    assert Settings(crypto_key=" , ").crypto_keys == []


def test_module_constants():
    assert settings_module.ENV_PREFIX == "CONNNODE_"
    assert settings_module.CONFIG_ENV == "CONNNODE_CONFIG"
    assert settings_module.INI_SECTION == "connnode"
