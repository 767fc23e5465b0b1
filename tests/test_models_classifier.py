import torch

from gan_pipeline.models.classifier import ClassifierFeatures, DigitClassifier


def test_classifier_gives_ten_logits_and_feature_dim_features():
    model = DigitClassifier(feature_dim=16)
    x = torch.rand(5, 1, 28, 28) * 2 - 1

    assert model(x).shape == (5, 10)
    assert model.features(x).shape == (5, 16)


def test_classifier_default_feature_dim_is_128():
    assert DigitClassifier().features(torch.zeros(2, 1, 28, 28)).shape == (2, 128)


def test_classifier_features_reports_num_features_and_returns_float64_without_grad():
    features = ClassifierFeatures(DigitClassifier(feature_dim=16))
    out = features(torch.rand(4, 1, 28, 28) * 2 - 1)

    assert features.num_features == 16
    assert out.shape == (4, 16)
    assert out.dtype == torch.float64
    assert not out.requires_grad


def test_classifier_features_are_the_classifiers_eval_features():
    torch.manual_seed(0)
    classifier = DigitClassifier(feature_dim=16)
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    features = ClassifierFeatures(classifier)

    with torch.no_grad():
        expected = classifier.eval().features(x).double()
    assert torch.equal(features(x), expected)


def test_classifier_features_stay_in_eval_mode_so_a_sample_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    features = ClassifierFeatures(DigitClassifier(feature_dim=16))
    features.train()
    x = torch.rand(8, 1, 28, 28) * 2 - 1

    assert not features.training and not features.classifier.training
    # In train mode BatchNorm would normalise with the batch's statistics and these would differ.
    torch.testing.assert_close(features(x)[:2], features(x[:2]))
