"""Alerting: rules the workers' beat evaluates, channels that carry the notices, the alerts that
fired and every delivery of them, and silences that mute a rule or a failure group."""
