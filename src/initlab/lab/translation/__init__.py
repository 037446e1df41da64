"""The translation lab: a Post-LN Transformer trained without warmup on English->Spanish Bible
verses, after each initialization method (the GradInit paper's Sec. 4.3 study, scaled down).

Files: `data.py` the corpus (exported with diatheke, aligned, tokenized, cached); `model.py` the
encoder-decoder Transformer; `decoding.py` greedy and beam search; `training.py` the loss, the
training loop and BLEU; `layers.py` the encoder and decoder layers with residual sums;
`recipe.py` the training protocols (`lab-mt`, `authors-mt`, registered in `initlab.lab.recipes`);
`inits.py` the methods the grid compares; `grid.py` the resumable grid of methods x optimizer
settings x seeds; `report.py` its tables and figures; `cli.py` the `initlab translate-grid`
command.
"""
from .data import TokenBatches, TranslationData, load_translation_data
from .decoding import beam_search, greedy_decode
from .grid import GridConfig, run_grid
from .inits import METHODS
from .layers import DecoderLayer, EncoderLayer
from .model import TransformerConfig, TranslationTransformer
from .recipe import AUTHORS_MT, LAB_MT, mt_recipes, mt_settings
from .report import write_report
from .training import Seq2SeqConfig, bleu, seq2seq_loss, train_seq2seq, translate

__all__ = [
    "AUTHORS_MT", "DecoderLayer", "EncoderLayer", "GridConfig", "LAB_MT", "METHODS",
    "Seq2SeqConfig", "TokenBatches", "TransformerConfig",
    "TranslationData", "TranslationTransformer", "beam_search", "bleu", "greedy_decode",
    "load_translation_data", "mt_recipes", "mt_settings", "run_grid", "seq2seq_loss",
    "train_seq2seq", "translate", "write_report",
]
