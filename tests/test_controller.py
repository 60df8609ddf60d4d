"""The node trainer makes Ray Train's controller class once per process (hql_ray.orchestration.controller)."""

from __future__ import annotations

import ray

from hql_ray.orchestration import controller


def test_the_mirrored_method_is_the_locked_rays():
    # The lock pins Ray 2.60.0: its trainer method is the one mirrored (another Ray gets TorchTrainer itself).
    if ray.__version__ == "2.60.0":
        assert controller.ray_method_matches()
        assert controller.trainer_class().__name__ == "NodeTrainer"


def test_two_fits_export_the_controller_class_once(ray_session, tmp_path, monkeypatch):
    from ray.train import RunConfig, ScalingConfig

    manager = ray._private.worker.global_worker.function_actor_manager
    exported = []
    original = manager.export_actor_class

    def counting(cls, descriptor, methods):
        exported.append(descriptor.class_name)
        return original(cls, descriptor, methods)

    monkeypatch.setattr(manager, "export_actor_class", counting)

    def rank_sum(config):  # (defined here: pickled by value, workers cannot import the tests)
        import ray.train

        return config["base"] + ray.train.get_context().get_world_rank()

    def cleaners() -> int:  # Ray Train's PlacementGroupCleaner and DatasetManager actors, from the GCS's table
        return sum(a["ActorClassName"] in ("PlacementGroupCleaner", "DatasetManager")
                   for a in ray._private.state.actors().values())

    trainer = controller.trainer_class()
    before = cleaners()
    values = []
    for i in range(2):
        result = trainer(rank_sum, train_loop_config={"base": 40 + i},
                         scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                         run_config=RunConfig(name=f"controller_{i}", storage_path=str(tmp_path))).fit()
        assert result.error is None
        values.append(result.return_value)
    assert values == [40, 41]
    if trainer.__name__ == "NodeTrainer":
        # at most once: an earlier test of this session may have exported it already
        assert sum("TrainController" in name for name in exported) <= 1
        # This Ray has no dashboard: Ray's cleaner could not poll its state API, so none is started; no datasets:
        # no DatasetManager either.
        assert not controller.state_api_available() and cleaners() == before
