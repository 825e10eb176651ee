"""The paper's reported numbers, typed in from its Table 1 (``TABLE1``), and the poster's,
typed in from its two tables (``POSTER_*``).

The poster (shared/paper/poster.md) is not the paper's text: its MLP table of cosines and
one-step effectiveness (of which the paper's text gives only "approximately 100x" and "more
than 1000x") and its LocalMixer table are typed in from the poster. Chapters label a value
"poster" where it is the poster's and "paper" only where it is the paper's own.

Never a result of ours: chapters show these beside what they compute.
"""
PAPER_DATASETS = ("cifar100", "cifar10", "svhn", "mnist")  # Table 1's column order

# (depth, width), method, split: (mean, std) per dataset in PAPER_DATASETS order.
_TABLE1 = """
3 128 directional             train 6.7 0.3 37.4 0.2 59.8 0.4 92.3 0.2
3 128 directional             test  6.1 0.4 35.8 0.4 57.4 0.4 92.2 0.2
3 128 activation_perturbation train 13.3 0.1 45.9 0.3 69.3 1.3 98.7 0.1
3 128 activation_perturbation test  12.2 0.2 42.3 0.5 65.4 1.3 96.9 0.2
3 128 activation_mixing       train 20.1 0.6 57.2 0.8 76.34 0.6 96.9 0.5
3 128 activation_mixing       test  11.6 0.3 44.2 0.5 69.6 0.4 95.7 0.2
3 128 w_transpose             train 25.6 0.2 62.4 0.8 81.3 0.9 100.0 0
3 128 w_transpose             test  17.1 0.3 46.9 0.8 76.2 0.4 97.5 0.1
3 128 downstream              train 30.8 0.7 65.6 0.5 83.2 0.8 99.9 0.1
3 128 downstream              test  18.1 0.3 47.8 0.7 76.9 0.4 97.5 0.1
3 128 self_sharpening         train 11.4 1.7 51.5 5.5 71.6 1.9 99.5 0.3
3 128 self_sharpening         test  10.6 0.9 35.4 2.1 64.8 1.6 94.2 0.5
3 128 backprop                train 100.0 0 100.0 0 99.5 0.9 100.0 0
3 128 backprop                test  19.7 0.1 49.0 0.3 81.8 0.2 97.8 0.1
6 128 directional             train 5.2 0.4 35.9 0.2 54.8 1.2 91.4 0.2
6 128 directional             test  4.6 0.4 34.4 0.5 53.2 1.3 91.4 0.1
6 128 activation_perturbation train 9.4 0.5 38.9 0.4 56.1 1.8 97.3 0.3
6 128 activation_perturbation test  9.9 0.5 38.9 0.3 53.4 1.1 96.2 0.1
6 128 activation_mixing       train 13.1 0.7 48.5 1.3 72.1 1.3 96.6 0.3
6 128 activation_mixing       test  10.6 0.5 42.5 1.0 66.4 0.9 95.3 0.2
6 128 w_transpose             train 16.5 0.4 51.5 0.2 73.2 1.1 99.2 0.1
6 128 w_transpose             test  14.1 0.3 46.5 0.4 69.4 1.6 96.9 0.2
6 128 downstream              train 16.1 0.4 52.8 0.8 77.0 1.2 99.5 0.1
6 128 downstream              test  14.1 0.3 46.5 0.5 72.8 1.0 97.0 0.1
6 128 self_sharpening         train 21.1 8.5 42.5 15.4 78.9 11.2 100.0 0.0
6 128 self_sharpening         test  14.0 2.7 43.2 1.1 70.6 0.8 96.2 0.2
6 128 backprop                train 100.0 0 100.0 0 100.0 0 100.0 0
6 128 backprop                test  17.9 0.4 47.5 0.3 80.2 0.3 97.4 0.1
3 1024 directional             train 9.0 0.1 35.9 0.2 54.8 1.2 91.4 0.2
3 1024 directional             test  8.0 0.2 34.8 0.3 47.2 1.0 92.8 0.1
3 1024 activation_perturbation train 9.9 0.6 36.7 2.7 50.1 5.6 96.2 1.2
3 1024 activation_perturbation test  9.4 0.2 38.3 0.4 55.6 1.1 96.6 0.2
3 1024 activation_mixing       train 26.9 0.4 59.4 1.2 80.8 1.8 98.4 1.2
3 1024 activation_mixing       test  15.0 0.3 44.6 0.7 73.3 0.9 97.0 0.2
3 1024 w_transpose             train 28.2 0.5 56.9 1.4 79.8 1.3 99.6 0.3
3 1024 w_transpose             test  17.6 0.5 48.0 0.4 75.3 0.6 97.7 0.1
3 1024 downstream              train 28.4 0.7 58.5 1.0 80.6 0.5 99.9 0.1
3 1024 downstream              test  18.3 0.3 48.4 0.5 76.4 0.5 97.8 0.0
3 1024 self_sharpening         train 23.1 1.1 70.8 15.0 69.8 5.2 100.0 0.0
3 1024 self_sharpening         test  11.9 1.4 38.7 1.1 65.1 4.0 96.1 0.1
3 1024 backprop                train 100.0 0 100.0 0 100.0 0 100.0 0
3 1024 backprop                test  25.0 0.5 53.8 0.1 83.2 0.1 98.3 0.1
6 1024 directional             train 7.8 0.1 32.2 0.1 37.4 0.2 91.4 0.3
6 1024 directional             test  6.9 0.5 31.7 0.3 37.8 0.4 91.3 0.3
6 1024 activation_perturbation train 3.6 0.4 26.9 1.6 24.3 4.5 95.5 0.8
6 1024 activation_perturbation test  4.7 0.2 32.4 0.6 31.8 2.0 96.0 0.1
6 1024 activation_mixing       train 18.1 0.4 52.2 1.3 78.4 2.2 97.2 0.2
6 1024 activation_mixing       test  14.0 0.2 44.9 0.5 72.5 0.8 95.7 0.2
6 1024 w_transpose             train 14.6 0.3 46.7 0.9 73.6 0.8 99.4 0.2
6 1024 w_transpose             test  14.0 0.5 45.2 0.5 70.7 0.6 97.4 0.1
6 1024 downstream              train 9.7 0.3 37.6 2.6 71.3 0.8 99.4 0.2
6 1024 downstream              test  10.2 0.4 40.6 0.4 69.6 1.3 97.5 0.1
6 1024 self_sharpening         train 18.1 9.1 97.5 3.9 97.9 0.5 99.9 0.1
6 1024 self_sharpening         test  10.1 0.5 33.5 2.9 68.1 0.8 93.7 1.9
6 1024 backprop                train 99.9 0.1 100.0 0 100.0 0 100.0 0
6 1024 backprop                test  25.2 0.3 52.4 0.3 82.9 0.1 97.9 0.2
"""


def _parse(text: str) -> dict:
    table = {}
    for line in text.strip().splitlines():
        depth, width, method, split, *numbers = line.split()
        values = [float(v) for v in numbers]
        for k, dataset in enumerate(PAPER_DATASETS):
            table[(int(depth), int(width), method, split, dataset)] = (values[2 * k], values[2 * k + 1])
    return table


# TABLE1[(depth, width, method, split, dataset)] = (mean, std), accuracy in percent.
TABLE1 = _parse(_TABLE1)


# --- the poster's numbers (not in the paper's text) ------------------------------------------

# "Results - MLPs": mean cosine similarity with the true gradient and one-step effectiveness
# (loss reduction relative to a backprop step), by method; CIFAR-10. Backprop is 1 in both.
_POSTER_MLP = """
directional             0.0003 1e-6
activation_perturbation 0.016  6.9e-4
activation_mixing       0.025  3.4e-3
w_transpose             0.030  1.7e-3
"""
POSTER_COSINE = {line.split()[0]: float(line.split()[1]) for line in _POSTER_MLP.strip().splitlines()}
POSTER_EFFECTIVENESS = {line.split()[0]: float(line.split()[2]) for line in _POSTER_MLP.strip().splitlines()}

# "Results - LocalMixer": CIFAR-10 test accuracy (%), one value per row of POSTER_LOCALMIXER_ROWS
# for each method (None where the poster has "-"). Its "Backprop" column is backprop through the
# whole network; its "Ren et al. (2022)" column is activation perturbation with local losses.
POSTER_LOCALMIXER_ROWS = ("Ren et al. reported", "reproduced with Adam", "augmented, 500 epochs",
                          "augmented, 5000 epochs")
_POSTER_LOCALMIXER = """
backprop                66.4 71.2 76.4 77.6
activation_perturbation 69.3 71.2 72.2 76.0
activation_mixing       -    68.8 68.2 69.4
w_transpose             -    72.5 74.4 77.4
"""
POSTER_LOCALMIXER = {line.split()[0]: tuple(None if v == "-" else float(v) for v in line.split()[1:])
                     for line in _POSTER_LOCALMIXER.strip().splitlines()}
