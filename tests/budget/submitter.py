"""
One "worker process" of the shared-budget tests: submits its prompts on one key through
:class:`CerebraformClient` with the connection's budget, after every process is ready (a start
file), and prints one JSON line of what happened.

``python tests/budget/submitter.py PROMPTS_JSON READY_FILE GO_FILE [MAX_WAIT]``, with the settings in
``CEREBRAFORM_TEST_SETTINGS``
(JSON; the key comes in the environment, not on the command line).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from airflow_provider_cerebraform.client import CerebraformClient
from airflow_provider_cerebraform.exceptions import CerebraformError, CerebraformRateLimitError
from airflow_provider_cerebraform.models import ConnectionSettings, Tier
from airflow_provider_cerebraform.validation import build_submission


def main() -> None:
    fields = json.loads(os.environ["CEREBRAFORM_TEST_SETTINGS"])
    prompts = json.loads(sys.argv[1])
    ready, go = Path(sys.argv[2]), Path(sys.argv[3])
    max_wait = float(sys.argv[4]) if len(sys.argv) > 4 else None
    settings = ConnectionSettings(**{**fields, "tier": Tier(fields["tier"])})
    client = CerebraformClient(settings, max_wait=max_wait)
    client.session.trust_env = False
    client.protocol.pacer.window  # noqa: B018 - the pacer (and its store) is made before the start
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    results: list[dict[str, object]] = []
    for prompt in prompts:
        began = time.monotonic()
        try:
            request_id = client.submit(build_submission("image", prompt))
            results.append({"prompt": prompt, "request_id": request_id})
        except CerebraformRateLimitError as error:
            results.append({"prompt": prompt, "error": "rate_limited", "retry_after": error.retry_after})
        except CerebraformError as error:
            results.append({"prompt": prompt, "error": type(error).__name__})
        results[-1]["seconds"] = time.monotonic() - began
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
