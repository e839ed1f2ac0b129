"""Shared by the tests of non-finite training steps."""


class PoisonGrads:
    """Lightning callback factory: NaN into one gradient on the listed steps (before the module's
    check)."""

    def __new__(cls, steps):
        from lightning.pytorch.callbacks import Callback

        class Poison(Callback):
            def on_before_optimizer_step(self, trainer, pl_module, optimizer):
                if steps == "all" or trainer.global_step in steps:
                    next(p for p in pl_module.parameters() if p.grad is not None).grad[0] = float(
                        "nan"
                    )

        return Poison()
