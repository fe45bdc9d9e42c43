"""The provider is installed and Airflow's own machinery sees it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import airflow
import jsonschema
import pytest

from airflow_provider_cerebraform.get_provider_info import get_provider_info


def test_provider_info_validates_against_the_installed_airflow_schema():
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_every_module_named_in_provider_info_imports():
    import importlib

    info = get_provider_info()
    for section in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[section]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    hook_path = info["connection-types"][0]["hook-class-name"]
    module, _, name = hook_path.rpartition(".")
    hook = getattr(importlib.import_module(module), name)
    assert hook.conn_type == "cerebraform"
    assert hook.default_conn_name == "cerebraform_default"


def test_airflow_cli_lists_the_provider_and_its_connection_type(tmp_path):
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    airflow_cli = [sys.executable, "-m", "airflow"]
    listed = subprocess.run(
        [*airflow_cli, "providers", "list", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    packages = {row["package_name"]: row for row in _json_output(listed.stdout)}
    assert "airflow-provider-cerebraform" in packages
    hooks = subprocess.run(
        [*airflow_cli, "providers", "hooks", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert hooks.returncode == 0, hooks.stderr[-2000:]
    rows = {row["connection_type"]: row for row in _json_output(hooks.stdout)}
    assert rows["cerebraform"]["class"] == "airflow_provider_cerebraform.hooks.cerebraform.CerebraformHook"
    assert rows["cerebraform"]["package_name"] == "airflow-provider-cerebraform"
    assert rows["cerebraform"]["hook_name"] == "Cerebraform"


def _json_output(stdout: str) -> list[dict]:
    """The JSON document of a CLI's output; Airflow 3.0 prints ``[<timestamp>]`` log lines before it."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("[") and not line.startswith("[20"))
    return json.loads("\n".join(lines[start:]))


def test_connection_form_shows_the_fields_on_every_airflow():
    """What the UI's connection form is built from (``/ui/connections/hook_meta``): before Airflow 3.2
    the hook's WTForms fields, from 3.2 the provider info's ``conn-fields``; both from one definition."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    (meta,) = [hook for hook in HookMetaService.hook_meta_data() if hook.connection_type == "cerebraform"]
    conn_fields = get_provider_info()["connection-types"][0]["conn-fields"]
    assert set(meta.extra_fields) == set(conn_fields)
    for name, definition in conn_fields.items():
        field = meta.extra_fields[name]
        assert field["schema"]["title"] == definition["label"]
        assert field["value"] == definition["schema"].get("default")
        assert field["description"] == definition.get("description")
    assert meta.extra_fields["tier"]["schema"]["enum"] == ["free", "paid"]
    assert meta.standard_fields.password.title == "API key"
    assert "https://cerebraform.com" in meta.standard_fields.host.placeholder
    assert meta.standard_fields.login.hidden and meta.standard_fields.port.hidden


@pytest.mark.airflow_min("3.2", reason="the providers manager reads conn-fields from 3.2 on")
def test_connection_form_fields_reach_the_providers_manager():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    widgets = manager.connection_form_widgets
    for field in ("tier", "timeout", "retry_limit", "rate_share", "verify_ssl"):
        assert f"extra__cerebraform__{field}" in widgets
    assert widgets["extra__cerebraform__tier"].field["schema"]["enum"] == ["free", "paid"]
    behaviour = manager.field_behaviours["cerebraform"]
    assert behaviour["relabeling"]["password"] == "API key"
    assert "login" in behaviour["hidden_fields"]


def test_every_form_field_has_help_text_and_the_bounds_the_hook_enforces():
    """The form refuses what the hook would refuse only when used (the UI saved timeout -5, share 5)."""
    import pytest
    from airflow.sdk import Connection

    from airflow_provider_cerebraform.exceptions import CerebraformValidationError
    from airflow_provider_cerebraform.hooks.cerebraform import settings_from_connection

    conn_type = get_provider_info()["connection-types"][0]
    fields = conn_type["conn-fields"]
    for name, spec in fields.items():
        assert spec.get("description"), f"conn field {name} has no help text"
    placeholders = conn_type["ui-field-behaviour"]["placeholders"]
    assert {"host", "password"} <= set(placeholders)

    def settings(**extra):
        conn = Connection(conn_id="c", conn_type="cerebraform", host="http://x", extra=json.dumps(extra))
        return settings_from_connection(conn)

    for name in ("timeout", "retry_limit", "rate_share"):
        schema = fields[name]["schema"]
        low, high = schema["minimum"], schema["maximum"]
        settings(**{name: low})
        settings(**{name: high})
        below = low - 1 if isinstance(low, int) and name == "retry_limit" else low / 2 if low else -1
        for bad in (below, high + 1, -5):
            with pytest.raises(CerebraformValidationError, match=rf"connection field {name}="):
                settings(**{name: bad})
    assert fields["timeout"]["schema"]["minimum"] > 0
    assert fields["rate_share"]["schema"]["minimum"] > 0 and fields["rate_share"]["schema"]["maximum"] == 1


@pytest.mark.airflow_min("3.1", reason="Airflow 3.0's Providers page links to airflow.apache.org always")
def test_the_providers_page_links_to_the_documentation_url_of_pyproject():
    """
    Airflow's Providers page links the package to the provider info's ``documentation-url``, which
    Airflow takes from the installed distribution's "Documentation" project URL; without one the page
    falls back to airflow.apache.org/docs/<package>/<version>/, which does not exist for this package.
    """
    from importlib.metadata import metadata

    import tomllib
    from airflow.providers_manager import ProvidersManager

    urls = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"][
        "urls"
    ]
    installed = dict(
        (part.strip() for part in entry.split(",", 1))
        for entry in metadata("airflow-provider-cerebraform").get_all("Project-URL") or []
    )
    assert installed == urls, "the installed metadata is stale: reinstall the package (scripts/bootstrap)"
    info = ProvidersManager().providers["airflow-provider-cerebraform"].data
    # Airflow 3.2 keeps the space after the comma of the metadata's "Documentation, <url>"; the page's
    # link still works (URL parsing drops leading spaces), so compare the URL itself.
    url = info["documentation-url"].strip()
    assert url == urls["Documentation"]
    assert "airflow.apache.org" not in url
    assert url.startswith("https://")
