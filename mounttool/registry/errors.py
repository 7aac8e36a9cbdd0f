"""Registry failures as MountToolErrors: each one a single line the user can act on.

The transport maps HTTP statuses, distribution error codes (``NAME_UNKNOWN``,
``MANIFEST_UNKNOWN``, ``UNAUTHORIZED``, ...) and socket failures onto these classes; nothing
here ever carries a credential.
"""

from __future__ import annotations

from mounttool.errors import MountToolError, NotFoundError


class RegistryError(MountToolError):
    """The registry answered with something we cannot use."""


class RegistryUnavailableError(RegistryError):
    """The registry cannot be reached: refused, unresolvable, TLS failure, timeout, cut off."""


class UnauthorizedError(RegistryError):
    """The registry refused our (missing or wrong) credentials."""


class RegistryNotFoundError(RegistryError, NotFoundError):
    """Unknown repository, tag, manifest or blob."""


class UnsupportedMediaTypeError(RegistryError):
    """A manifest or blob whose media type mounttool does not handle."""


class PlatformNotFoundError(RegistryError):
    """An image index without a manifest for the wanted platform."""
