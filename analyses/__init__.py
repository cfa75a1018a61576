"""The analyses of Tang, Shi & Wang, one module per figure or table (a reader finds each by name):

  cell_distributions   Figs. 1-2   cell value distributions of 50 random units per layer
  range_shares         Fig. 3      share of LSTM c in (-2, 2), of GRU c outside (-0.7, 0.7)
  responsibility       Figs. 4-6   units responsible for each phone; single-phone units
  temporal_trace       Figs. 7, 10 t-SNE path of one utterance's cell vectors; smoothness
  memory_robustness    Fig. 8      cell change after an inserted noise segment; impact duration
  comparisons          Tables 1-3  error by cell, depth, lazy update and residual shortcuts
  claims                           the paper's findings checked against the numbers
  registry                         every module above that declares ANALYSIS, in the paper's order
  common                           the Analysis declaration, the store reader, summary rows, figures

Pure: frames and parameters in, numbers and figures out. Analyses read the store through the
narrow ``StoreReader`` (queries only) and never write it; the driver in ``service/`` does.
"""
