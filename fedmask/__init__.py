"""fedmask: differentially private adapters, aggregated under secure aggregation over gRPC.

One import namespace over the project's folders (see ``[tool.setuptools.package-dir]`` in
pyproject.toml): ``fedmask.secagg`` is secagg/, ``fedmask.proto`` is proto/,
``fedmask.participant`` is participant/, ``fedmask.coordinator`` is coordinator/ and
``fedmask.bench`` is bench/.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedmask")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
