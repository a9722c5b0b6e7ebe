"""The export definitions this deployment knows: the shipped ones and the team's own files
(``registry``), and how a team's YAML or Python file becomes a definition (``files``)."""
