"""Control: does the drift matter? Tasks in a simulator, planners over any WorldModel, baselines,
success as the field measures it, and replayable control reports."""
