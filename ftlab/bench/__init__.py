"""Course tooling: `ftlab bench`, the same fine-tuning timed through three loops; results/ holds
the recorded runs and their README."""
