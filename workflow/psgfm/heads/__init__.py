"""Stage ``heads`` (rule file ``workflow/rules/heads.smk``): downstream heads on the encoder's
embeddings, trained on the model stage's subject splits (docs/heads.md).

- :mod:`psgfm.heads.staging`: the sleep-staging head (the release's
  ``SleepEventLSTMClassifier`` layout, its defects fixed) and the tokens-to-epochs rule;
- :mod:`psgfm.heads.data`: a whole night's 5-s token embeddings from what ``embed`` writes,
  with their modality masks and the harmonised stage labels;
- :mod:`psgfm.heads.train`: training (resumable), prediction of every recording's hypnogram
  and evaluation on the test subjects;
- :mod:`psgfm.heads.yasa_baseline`: YASA's pretrained stager on the scored test recordings,
  a baseline of the evaluation;
- :mod:`psgfm.heads.apnea`: the apnea head (ridge on the night embeddings: log(1 + AHI),
  presence at 5 and 15, severity) and :mod:`psgfm.heads.apnea_evaluate`, its evaluation
  beside the ODI and the random-init head;
- :mod:`psgfm.heads.bootstrap`: the bootstrap over recordings both evaluations share.

Night indices scored from annotations (AHI, ODI) live below this package, in
:mod:`psgfm.signals.nightscore`, shared with the atlas.
"""
