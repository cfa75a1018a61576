"""The analyses of Tang, Shi & Wang, one module per figure or table (a reader finds each by name):

  cell_distributions   Figs. 1-2   cell value distributions of 50 random units per layer
  range_shares         Fig. 3      share of LSTM c in (-2, 2), of GRU c outside (-0.7, 0.7)
  responsibility       Figs. 4-6   units responsible for each phone; single-phone units
  temporal_trace       Figs. 7, 10 t-SNE path of one utterance's cell vectors; smoothness
  memory_robustness    Fig. 8      cell change after an inserted noise segment; impact duration
  comparisons          Tables 1-3  error by cell, depth, lazy update and residual shortcuts
  claims                           the paper's findings checked against the numbers
  study                            a study's analyses as parallel Ray tasks, one writer
  common                           store access, summary rows, figure helpers
  cli                              gatelens analyse / claims / report
"""
