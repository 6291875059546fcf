"""Operations code for running alignloop as a service: the local stack's process manager (infra/stack.py).
The rest of this directory is deployment material (install.sh, constraints.txt, prefect.yaml, k8s/, README.md)."""
