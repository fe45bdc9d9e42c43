"""Provider metadata, read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_cerebraform import __version__

_CONN_TYPE = "cerebraform"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-cerebraform",
        "name": "Cerebraform",
        "description": "Generate images and videos with `Cerebraform <https://cerebraform.com>`__.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Cerebraform",
                "external-doc-url": "https://cerebraform.com",
                "tags": ["ai", "media"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Cerebraform",
                "python-modules": ["airflow_provider_cerebraform.hooks.cerebraform"],
            }
        ],
        "operators": [
            {
                "integration-name": "Cerebraform",
                "python-modules": [
                    "airflow_provider_cerebraform.operators.cerebraform",
                    "airflow_provider_cerebraform.operators.batch",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Cerebraform",
                "python-modules": ["airflow_provider_cerebraform.sensors.cerebraform"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Cerebraform",
                "python-modules": [
                    "airflow_provider_cerebraform.triggers.cerebraform",
                    "airflow_provider_cerebraform.triggers.batch",
                ],
            }
        ],
        "extra-links": [
            "airflow_provider_cerebraform.links.CerebraformMediaLink",
            "airflow_provider_cerebraform.links.CerebraformRequestLink",
        ],
        "connection-types": [
            {
                "connection-type": _CONN_TYPE,
                "hook-class-name": "airflow_provider_cerebraform.hooks.cerebraform.CerebraformHook",
                "hook-name": "Cerebraform",
                "conn-fields": {
                    "tier": {
                        "label": "Account tier",
                        "description": "Sets the client-side pacing: free 10 tasks/hour and 20 polls/minute, "
                        "paid 200 tasks/hour and 120 polls/minute.",
                        "schema": {"type": ["string", "null"], "enum": ["free", "paid"], "default": "free"},
                    },
                    "timeout": {
                        "label": "Request timeout (seconds)",
                        "description": "Seconds to connect and to wait for each answer of the API, "
                        "from 0.1 to 3600.",
                        "schema": {
                            "type": ["number", "null"],
                            "default": 30,
                            "minimum": 0.1,
                            "maximum": 3600,
                        },
                    },
                    "retry_limit": {
                        "label": "Retry limit",
                        "description": "Retries (0 to 20) of a request that failed for a transient reason. "
                        "Task creation is never retried after it may have reached the service.",
                        "schema": {"type": ["integer", "null"], "default": 3, "minimum": 0, "maximum": 20},
                    },
                    "rate_share": {
                        "label": "Share of the rate limit",
                        "description": "Fraction (0.01-1) of the tier's limits each process may use; "
                        "lower it when several triggerers or workers use the same key.",
                        "schema": {"type": ["number", "null"], "default": 1.0, "minimum": 0.01, "maximum": 1},
                    },
                    "budget": {
                        "label": "Rate budget shared by",
                        "description": "Who shares the key's rate budget: 'process' (each process paces "
                        "alone), 'host' (every process on this machine, through a locked file) or 'redis' "
                        "(every process on every host, through the Redis URL below; needs the provider's "
                        "[redis] extra). See docs/scaling.md.",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": ["process", "host", "redis"],
                            "default": "process",
                        },
                    },
                    "budget_dir": {
                        "label": "Host budget directory",
                        "description": "For budget 'host': a directory every Airflow process on the "
                        "machine can write (default: cerebraform-budget under the system temp directory).",
                        "schema": {"type": ["string", "null"]},
                    },
                    "redis_url": {
                        "label": "Budget Redis URL",
                        "description": "For budget 'redis': redis://[:password@]host:port/db of a Redis "
                        "every Airflow host reaches (the Celery broker's Redis will do).",
                        "schema": {"type": ["string", "null"]},
                    },
                    "ledger": {
                        "label": "Generation ledger",
                        "description": "Object storage folder (e.g. "
                        "s3://aws_default@bucket/cerebraform-ledger or file:///data/cerebraform-ledger) "
                        "where stored generations are recorded: an "
                        "operator asked for a generation already stored there copies it and pays nothing. "
                        "An operator's ledger parameter overrides it. See docs/ledger.md.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "verify_ssl": {
                        "label": "Verify TLS certificates",
                        "description": "Check the API's TLS certificate. Turn off only for a test server "
                        "with a self-signed certificate; the task log then warns.",
                        "schema": {"type": ["boolean", "null"], "default": True},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"password": "API key", "host": "Base URL"},
                    # The form has no help text for standard fields: their placeholders carry it.
                    "placeholders": {
                        "host": "Base URL; empty means https://cerebraform.com",
                        "password": "API key from the Cerebraform dashboard; empty means the anonymous quota",
                    },
                },
            }
        ],
    }
