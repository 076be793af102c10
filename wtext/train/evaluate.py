"""--eval-only: the test loss and accuracy of a checkpoint, evaluated as the model it was trained as."""

from collections.abc import Collection

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .distributed import finish_together, shutdown
from .run_dir import check_run_dir, evaluated_checkpoint_path, settings_for_evaluation
from .trainer import Trainer


def evaluate_checkpoint(config: TrainConfig, given: Collection[str] | None = None) -> dict:
    """Evaluates config.checkpoint (default: run_dir/checkpoint.pt) on the test split of the run's data set, with
    the model and mask settings the checkpoint was trained with (settings_for_evaluation; given: the options the
    user set, None for those that differ from their defaults)."""
    check_run_dir(config)
    path = evaluated_checkpoint_path(config)
    saved = load_checkpoint(path, "cpu")  # its structure checked, its weights finite
    trainer = Trainer(settings_for_evaluation(config, saved.get("config", {}), path, given))
    try:
        trainer.load_model_state(saved, path)
        ((loss, accuracy),) = trainer.step.evaluate()
        images = len(trainer.data.test)
        trainer.log(f"{path}: test loss {loss:.4f}, test accuracy {accuracy:.4f} ({images} images)")
        finish_together(trainer.cluster)
        return {"test_loss": loss, "test_accuracy": accuracy, "test_images": images, "checkpoint": str(path)}
    finally:
        shutdown(trainer.cluster)
