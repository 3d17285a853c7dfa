"""Training the project's own models (``clt-bench toy-model train``): the toy and the planted
model, their synthetic corpus, and the planted model's acceptance numbers. Above the task layer
(they train on the task's prompts); the loaders of the trained weights live in ``models``."""
