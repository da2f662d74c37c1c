"""What training prints: a bar on a terminal, epoch lines in a log, no Lightning tips or warnings
about its internals (the whole output of a run is checked in test_train's DDP test)."""
import io
import logging
import warnings

from lightning_utilities.core import rank_zero
from pytorch_lightning.callbacks import TQDMProgressBar

from butd.training.console import EpochLines, progress, quiet_lightning


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_and_a_log_gets_epoch_lines():
    [bar], shown = progress(50, Terminal())
    assert shown and isinstance(bar, TQDMProgressBar) and bar.refresh_rate == 50
    [lines], shown = progress(50, io.StringIO())
    assert not shown and isinstance(lines, EpochLines)


def test_lightnings_tips_and_internal_warnings_are_silenced_and_ours_are_not(caplog):
    quiet_lightning()
    with caplog.at_level(logging.INFO):
        rank_zero.log.info("💡 Tip: try our cloud")
        rank_zero.log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_lightning()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("The number of training batches (3) is smaller than the logging interval "
                      "Trainer(log_every_n_steps=50).", UserWarning, stacklevel=1)
        warnings.warn("a store is missing", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a store is missing"]
