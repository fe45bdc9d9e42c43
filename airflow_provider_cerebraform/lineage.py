"""
OpenLineage for the provider's operators, following the OpenLineage provider's developer guide: an
operator's ``get_openlineage_facets_on_complete(task_instance)`` returns an ``OperatorLineage`` of
input and output datasets, and the provider's listener puts them in the task's COMPLETE event.

The OpenLineage provider is optional (``pip install 'airflow-provider-cerebraform[openlineage]'``):
it is imported only when :func:`operator_lineage` runs, which only its listener makes happen.
Datasets are named as the OpenLineage naming spec and Airflow's own asset converters name them:
``s3://bucket`` + key, ``gs://bucket`` + key, ``file`` + absolute path, and for an HTTP resource
(the API's result endpoint) ``https://host[:port]`` + path. The Airflow connection id of an
``s3://conn@bucket/key`` URI is dropped: it names credentials, not data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["dataset_name", "operator_lineage"]

#: Schemes whose first path part is a bucket: the namespace is ``scheme://bucket``, the name the key.
_BUCKET_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "abfs": "abfs", "az": "abfs"}


def dataset_name(uri: str) -> tuple[str, str]:
    """
    The OpenLineage ``(namespace, name)`` of a stored file or a resource.

    :param uri: a URL such as ``s3://aws_default@bucket/media/a.png``, ``file:///data/a.png``,
        ``https://cerebraform.com/ai/v1/to-image/result/<id>``, or an absolute local path.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if not scheme or scheme == "file":
        return ("file" if not host else f"file://{host}", parts.path if scheme else uri)
    if scheme in _BUCKET_SCHEMES:
        return f"{_BUCKET_SCHEMES[scheme]}://{host}", parts.path.lstrip("/") or "/"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return f"{scheme}://{netloc}", parts.path or "/"


def _datasets(uris: Iterable[str]) -> list[Any]:
    from airflow.providers.common.compat.openlineage.facet import Dataset

    seen: dict[tuple[str, str], None] = {}
    for uri in uris:
        seen.setdefault(dataset_name(str(uri)), None)
    return [Dataset(namespace=namespace, name=name) for namespace, name in seen]


def operator_lineage(inputs: Iterable[str], outputs: Iterable[str]) -> Any:
    """
    An ``OperatorLineage`` with one dataset per distinct URI, in the order given.

    :param inputs: what the task read: the prompt dataset, the API's result endpoint, or the ledger's
        stored files it copied.
    :param outputs: what it wrote: the stored media (or their folders, when there are very many).
    """
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(inputs=_datasets(inputs), outputs=_datasets(outputs))
