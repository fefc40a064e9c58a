# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""``MVTec``: the pre-2.3 name of anomalib's MVTec AD datamodule, kept as an alias of ``MVTecAD``.

anomalib 2.3.1 renamed ``MVTec`` to ``MVTecAD``; users (and anomalib's own help text) still type
``--data MVTec``. jsonargparse resolves short names among subclasses, so the alias is a subclass that adds
nothing. Its ``name`` stays ``MVTecAD`` so results land in the same folders.
"""

from anomalib.data import MVTecAD


class MVTec(MVTecAD):
    """Alias of :class:`anomalib.data.MVTecAD` (``--data MVTec``); same arguments, same behaviour.

    Example:
        >>> from anomalib_diffad.datamodules import MVTec
        >>> MVTec(root="./datasets/MVTecAD", category="bottle").name
        'MVTecAD'
    """

    @property
    def name(self) -> str:
        """Dataset name used in result paths: the same as ``MVTecAD``'s."""
        return "MVTecAD"
