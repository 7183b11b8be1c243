"""One-command reproductions of the seeds' comparisons on the embedded corpus."""
