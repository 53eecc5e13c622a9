"""Stage `model` (rule file ``workflow/rules/model.smk``): the SleepFM-compatible encoder
(:mod:`.encoder`), the release's reference forward (:mod:`.release`), data loading
(:mod:`.data`), the contrastive loss (:mod:`.loss`), checkpoints (:mod:`.checkpoint`),
pretraining (:mod:`.pretrain`, :mod:`.launch`), embedding extraction (:mod:`.embed`) and the
linear-probe validation against planted truth (:mod:`.probe`)."""
