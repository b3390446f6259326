"""What every stage and command uses: errors, atomic writes, the entry wrapper, the params schema and
the machine facts it is checked against (device).

A dvc.yaml dependency of every stage (as a directory): keep here only what all of them import.
"""
