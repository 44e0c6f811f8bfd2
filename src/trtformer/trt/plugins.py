"""Registering the TensorRT plugins a plugin-form artifact uses (full TensorRT only: TensorRT-RTX has no plugin
layers). The parser needs them before parsing, or it inlines the nodes' local functions (a working engine, but
without the fused kernels), and deserializing an engine with plugin layers looks them up."""

from __future__ import annotations

from ..artifact import Manifest
from ..errors import EngineError


def register_plugins(manifest: Manifest) -> list[str]:
    """Register the creators of the manifest's plugins, under each plugin's name and every op type its nodes carry;
    returns the plugin names. The plugin registry (and with it torch) is imported only when there is one."""
    if not manifest.plugins:
        return []
    from ..plugins.registry import PLUGINS

    names = []
    for record in manifest.plugins:
        plugin = PLUGINS.get(record.name)
        if plugin is None:
            raise EngineError(f"the artifact uses the plugin {record.name!r}, which this trtformer does not provide",
                              hint="re-export with this trtformer, or in the portable form")
        plugin.load_trt().register([t.op_type for t in record.op_types])
        names.append(record.name)
    return names
