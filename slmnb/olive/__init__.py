"""Olive interop: Olive run configs read into slmnb's FinetuneConfig (runconfig), and runs written back as Olive
run configs (writer). Nothing here imports Olive itself; slmnb reads and writes its formats."""
