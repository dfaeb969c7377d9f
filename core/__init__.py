"""The floor every domain stands on: how a batch splits into inputs and targets, media logging, optimizer and
scheduler construction, the non-finite-loss guard, metric collections and the data-dependent values a DataModule
declares. Nothing here imports ``lightning_modules``, ``datamodules``, ``callbacks`` or ``recipes``: all of them may
import it."""
