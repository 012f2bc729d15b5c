"""The LightningCLI every training command (`vlbert pretrain`, `vqa`, `retrieval`, `caption`) is built on:
typed constructor arguments as the config schema, a YAML `--config`, unknown keys refused, the
resolved config saved beside the run. Unless the config says otherwise a run logs to TensorBoard
and CSV in one folder and shows `StepProgressBar`.

Before the trainer is built, the run is checked (vlbert.training.preflight): its outputs, the
checkpoint it resumes from, the data against the model. Bad input raises vlbert.errors.InputError,
which `vlbert` prints as one line (exit 2); a run folder made for a run that stops on bad input
before its first step is removed again."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import ClassVar

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from vlbert.data.tokenizer import vocabulary_fingerprint
from vlbert.errors import InputError, one_line
from vlbert.training.preflight import check_checkpoint, check_new_output, check_writable
from vlbert.training.progress import StepProgressBar

# what Lightning's Trainer method of each subcommand takes besides the config
_SUBCOMMANDS = {
    "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
    "validate": {"model", "dataloaders", "datamodule"},
    "test": {"model", "dataloaders", "datamodule"},
    "predict": {"model", "dataloaders", "datamodule", "return_predictions"},
}


class LightningTipFilter(logging.Filter):
    """Drops Lightning's "💡 Tip: ... litlogger / litmodels" adverts, printed on every run with no
    switch of their own (Lightning-AI/pytorch-lightning#21294); its other messages stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


_TIP_FILTER = LightningTipFilter()
# the loggers rank_zero_info writes to (whichever of Lightning's packages was imported last set it)
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                      "lightning_utilities.core.rank_zero")


def silence_lightning_tips() -> None:
    for name in _RANK_ZERO_LOGGERS:
        logging.getLogger(name).addFilter(_TIP_FILTER)  # once: a logger keeps one copy of a filter


class StderrHandler(logging.Handler):
    """vlbert's own messages (what a model was initialised from, ...) on stderr, from rank 0 only;
    sys.stderr is looked up at each message, so redirections made later are followed."""

    def emit(self, record: logging.LogRecord) -> None:
        if rank_zero_only.rank == 0:
            print(self.format(record), file=sys.stderr)


def show_vlbert_messages() -> None:
    logger = logging.getLogger("vlbert")
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        logger.addHandler(StderrHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def default_loggers(root_dir: str) -> list[Logger]:
    """TensorBoard and CSV in one run folder, `<root_dir>/lightning_logs/version_N/` (N the next
    free number, or the SLURM job id as Lightning's own default logger does)."""
    tensorboard = TensorBoardLogger(root_dir, version=SLURMEnvironment.job_id())
    csv = CSVLogger(root_dir, name=tensorboard.name, version=tensorboard.version)
    tensorboard.made_dir = not Path(tensorboard.log_dir).exists()  # a resubmitted SLURM job's folder is not new
    # Make the folder now (rank 0): CSVLogger warns when its folder already holds files, and by its
    # first write TensorBoard's event file and the saved config.yaml would be there.
    csv.experiment
    return [tensorboard, csv]


class VLBertArgumentParser(LightningArgumentParser):
    """A wrong argument or config key is one line naming it (jsonargparse prints the whole usage,
    some hundred lines, before it); `--help` still lists everything."""

    def error(self, message: str, ex: Exception | None = None):
        from jsonargparse._common import debug_mode_active

        if not self.exit_on_error or debug_mode_active():
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        print(f"{prog}: error: {one_line(message)} (all options: {prog} --help)", file=sys.stderr)
        sys.exit(2)


class VLBertCLI(LightningCLI):
    """A job's CLI names its subcommands; `run` starts it as the `vlbert` command does."""

    subcommand_names: ClassVar[tuple[str, ...]] = ("fit", "validate")

    def __init__(self, *args, **kwargs) -> None:
        # model.optimization is the one way to set the optimiser and schedule: no --optimizer /
        # --lr_scheduler that would silently replace it
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", VLBertArgumentParser)
        super().__init__(*args, **kwargs)

    @classmethod
    def subcommands(cls) -> dict[str, set[str]]:
        return {name: _SUBCOMMANDS[name] for name in cls.subcommand_names}

    @classmethod
    def run(cls, module_class, datamodule_class, argv: list[str] | None, prog: str) -> int:
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # called from Python with args
        show_vlbert_messages()
        cls(module_class, datamodule_class, args=argv, save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": prog})
        return 0

    def add_core_arguments_to_parser(self, parser) -> None:
        super().add_core_arguments_to_parser(parser)
        parser.add_argument("--allow_tokenizer_mismatch", type=bool, default=False,
                            help="train with a tokenizer whose vocabulary differs from the one the model was "
                                 "trained with (refused otherwise)")

    # -- checks before the trainer starts ----------------------------------------------------

    _run_dirs: tuple[Path, ...] = ()  # run folders this process made (removed again on bad input before step 1)
    _checkpoint: dict | None = None  # the --ckpt_path checkpoint, checked

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads `--ckpt_path`'s hyperparameters into the config first: the file is checked
        before that (a vlbert checkpoint of this job), so another file is one line, not torch's advice."""
        stage = self.config.get("subcommand")
        ckpt_path = self.config[stage].get("ckpt_path") if stage else None
        if ckpt_path is not None:
            self._checkpoint = check_checkpoint(ckpt_path, self.model_class.job)
        super()._parse_ckpt_path()

    def preflight(self) -> None:
        """The checks of the module docstring, in the order a user would fix them."""
        stage = self.subcommand
        if stage is None:  # LightningCLI(run=False): the caller runs what it wants
            return
        config = self.config[stage]
        self.model.allow_tokenizer_mismatch = bool(config.get("allow_tokenizer_mismatch"))
        ckpt_path = config.get("ckpt_path")
        root_dir = config.get("trainer", {}).get("default_root_dir") or os.getcwd()
        check_writable("trainer.default_root_dir", root_dir)
        for key, (path, directory) in self.model.output_paths(stage, root_dir).items():
            check_new_output(key, path, directory, resuming=ckpt_path is not None)
        checkpoint = self._checkpoint
        self.datamodule.setup(stage)
        self.model.check_inputs(self.datamodule, stage)
        expected = (checkpoint or {}).get("vlbert_vocabulary")
        if expected and not self.model.allow_tokenizer_mismatch and expected != vocabulary_fingerprint(self.datamodule.tokenizer):
            raise InputError(f"data.tokenizer {self.datamodule.tokenizer.name_or_path} is not the tokenizer checkpoint "
                             f"{ckpt_path} was trained with ({checkpoint.get('vlbert_tokenizer')}); use that one, or pass "
                             "--allow_tokenizer_mismatch true on purpose")

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except InputError:
            if self.trainer.global_step == 0:
                self.remove_run_dirs()
            raise

    def remove_run_dirs(self) -> None:
        """The run folders this process made, when nothing was trained into them (no checkpoint)."""
        for directory in self._run_dirs:
            if directory.is_dir() and not any(directory.rglob("*.ckpt")):
                shutil.rmtree(directory, ignore_errors=True)
                parent = directory.parent
                if parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The trainer the config describes (after `preflight`), with this project's defaults where it
        is silent: `trainer.logger` unset (null) or true: TensorBoard + CSV under
        `trainer.default_root_dir`; the progress bar on (the default) and none in `trainer.callbacks`:
        `StepProgressBar`."""
        self.preflight()
        silence_lightning_tips()
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = default_loggers(config.get("default_root_dir") or os.getcwd())
            self._run_dirs = tuple(Path(logger.log_dir) for logger in kwargs["logger"][:1] if getattr(logger, "made_dir", False))
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        wants_bar = config.get("enable_progress_bar") is not False and not config.get("barebones")
        if wants_bar and "callbacks" not in kwargs and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        return super().instantiate_trainer(**kwargs)
