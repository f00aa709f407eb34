"""The contract every component imports (docs/contract.md): ``names`` (wire names), ``conditions`` (condition
types, reasons, exit codes), ``types`` (the FineTuneJob model, with ``base`` and ``status``), ``trainer_config``
(the trainer's typed configuration), ``termination`` (the trainer's result), ``dataset`` (preference data)."""
