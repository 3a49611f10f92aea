"""scikit-learn's own estimator checks on the default estimators."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_finetune import FoundationClassifier, FoundationRegressor


def expected_failed_checks(estimator):
    if isinstance(estimator, FoundationRegressor):
        return {
            "check_regressors_train": (
                "the default budget (30 epochs) is about 150 steps on this 200-sample "
                "set, too few for an MLP from scratch to reach R^2 > 0.5 (it reaches "
                "0.2; 0.7 with max_epochs=100)"
            ),
        }
    return {}


@parametrize_with_checks(
    [FoundationClassifier(), FoundationRegressor()],
    expected_failed_checks=expected_failed_checks,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
