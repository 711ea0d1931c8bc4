"""The main job: Ray Tune + Optuna + ASHA search, then leave-one-session-out evaluation.

The search itself arrives with the tune issue; until then this prints what it will do."""
print("turbo_ray: the Tune search demo arrives with the tune issue (#5); "
      "`make test` exercises the model and losses today.")
