from __future__ import annotations

from torch import nn

from decaykit.policy.names import canonical_name, unwrap_model


def test_canonical_name_strips_every_wrapper():
    assert canonical_name("module._orig_mod.h.0._checkpoint_wrapped_module.attn.weight") == "h.0.attn.weight"
    assert canonical_name("_fsdp_wrapped_module.layers.0._fsdp_wrapped_module.w") == "layers.0.w"
    assert canonical_name("module.module.fc.weight") == "fc.weight"
    # a user's own submodule called "module" deeper in the tree is kept
    assert canonical_name("encoder.module.fc.weight") == "encoder.module.fc.weight"
    assert canonical_name("lin.parametrizations.weight.original") == "lin.weight"


def test_unwrap_model_follows_known_wrappers_only():
    inner = nn.Linear(2, 2)

    class DistributedDataParallel(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    class Holder(nn.Module):  # a user's class with a 'module' attribute is not a wrapper
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap_model(DistributedDataParallel(inner)) is inner
    holder = Holder(inner)
    assert unwrap_model(holder) is holder
