"""A sampler that counts its own work (shared by tests/ddp_run.py and tests/test_ddp.py)."""

from sftrl_callbacks.hf_sampler import HFSampler


class CountingSampler(HFSampler):
    """Counts the modules with forward pre-hooks at each sampling call (under ZeRO-3 DeepSpeed hooks every
    module, and gathering the parameters once for sampling lifts those hooks) and the rows of the eval-mode
    forwards it runs (this rank's share of the work)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hooked_modules: list[int] = []
        self.forward_rows = 0

    def sample(self, model, *args, **kwargs):
        self.hooked_modules.append(sum(1 for m in model.modules() if m._forward_pre_hooks))
        handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
        try:
            return super().sample(model, *args, **kwargs)
        finally:
            handle.remove()

    def _count(self, module, args, kwargs) -> None:
        if not module.training:
            self.forward_rows += kwargs["input_ids"].shape[0]
