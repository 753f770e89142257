"""The development set of real deepfakes: a catalogue of public FF++/DFDC clips (repository, commit, path, git blob id, the metadata that decides each label) and the builder that copies them out of local clones into a folder with labels.csv and manifest.json.

The clips are research-only material from other people's repositories: the builder refuses to write
inside this repository, and nothing here downloads anything (git runs with every transport disabled).
Run `python -m tools.datasets.devset --clones DIR --out /work/devset` after cloning the repositories
listed in SOURCES (docs/evaluation.md says how).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from workbench.video import VideoError, probe

REPO_ROOT = Path(__file__).resolve().parents[2]
LABELS = ("real", "fake")
METHODS = ("original", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "DeepFakeDetection", "DFDC",
           "DeeperForensics", "unknown")
DATASETS = ("FF++c23", "FF++c40", "DFDC", "DeeperForensics", "other")
CSV_COLUMNS = ("path", "label", "source", "method", "dataset")

# The FF++ folder layout is the label: originals are real, every manipulated_sequences/<method> is fake.
# Some repositories shorten the two top folders to original/ and manipulate/; the rest is FF++'s own.
_FFPP_PATH = re.compile(r"(?:^|/)((?:original_sequences|original)/(?:youtube|actors)|"
                        r"(?:manipulated_sequences|manipulate)/([A-Za-z0-9]+))/(c23|c40|raw)/videos/[^/]+$")


@dataclass(frozen=True)
class Source:
    """A public repository the clips come from: its name on GitHub, the commit we read, its stated terms."""

    key: str  # the subfolder under the output folder
    repo: str  # owner/name on GitHub
    commit: str
    terms: str  # what the repository itself says about use, in our words


@dataclass(frozen=True)
class FfppFolder:
    """Label from the FF++ layout: original_sequences -> real, manipulated_sequences/<method> -> fake."""


@dataclass(frozen=True)
class DfdcMetadata:
    """Label from a DFDC metadata.json ("label": "FAKE"/"REAL"), read at a given commit of a given source."""

    source: str  # key of the Source holding the metadata file
    commit: str
    path: str
    key: str  # the video's name in the metadata (the original DFDC file name)


@dataclass(frozen=True)
class NotebookVariable:
    """Label from the notebook that loads the clip into a variable named ..._real_... or ..._fake_..."""

    path: str
    name: str  # the clip's file name as the notebook writes it


@dataclass(frozen=True)
class GroundTruthJson:
    """Label from a ground-truth JSON of the source mapping file name to 0 (real) or 1 (fake), as the
    repository's own evaluation reads it (`why` says where the repository states which way round)."""

    path: str
    key: str
    why: str


@dataclass(frozen=True)
class StatedInReadme:
    """Label stated by the repository's README or file naming (weaker evidence: said so in `why`)."""

    label: str
    why: str


@dataclass(frozen=True)
class Clip:
    """One public clip: where it lives, the git blob id that pins its bytes, and what decides its label."""

    source: str
    path: str  # inside the repository
    blob: str  # git blob id (sha1 of the git object) at the source's commit
    method: str
    dataset: str
    rule: FfppFolder | DfdcMetadata | NotebookVariable | GroundTruthJson | StatedInReadme
    note: str = ""


ICPR = "polimi-ispl/icpr2020dfdc"
SOURCES = (
    Source("icpr2020dfdc", ICPR, "bbd64115e612e50416fb64fa8f60393fe4642dc0",
           "GPL-3.0 for the code; the clips are samples of FaceForensics++ and DFDC, whose own terms "
           "(research use, no redistribution beyond them) still apply"),
    Source("deepfake-detect", "aaronchong888/DeepFake-Detect", "d64ca2ab05b5ac812f8bb3849bfbb7aff07a2f94",
           "MIT for the code; the clips come from the Kaggle DFDC training sample, under the competition's data terms"),
    Source("honggu-deepfake-detection", "HongguLiu/Deepfake-Detection", "cecd5ab4b50a482ccf5e64b1057b7cfbb6094fc9",
           "README: academic use only, contact the authors for commercial use; the clip is FaceForensics++ material"),
    Source("jphdotam-dfdc", "jphdotam/DFDC", "b08c31781406e303394642c2af1ab59222115683",
           "MIT for the code; the face-crop clips are derived from DFDC training part 0, under DFDC's terms"),
    Source("mudouble-ffpp", "mudouble/FaceForensics-Detection_Website", "0f59c2fcd368af257f72a0fb3c485552107cb327",
           "no licence stated; the README says it is built on FaceForensics++, whose terms (research use, no "
           "redistribution) apply to the clips"),
    Source("deeperforensics-challenge", "beibuwandeluori/DeeperForensicsChallengeSolution",
           "d19284d48d386a7409f097ad2755c6a9c31a5729",
           "MIT for the code; the clips are DeeperForensics-1.0 material, under its non-commercial research terms"),
    Source("cyshih-deepfake-detection", "cyshih704/Deepfake-Detection", "fd5a5b8eee5fd0e2bc5f4ef43c0346e9c77e8061",
           "no licence stated; the README trains on FaceForensics++, whose terms apply to the clips"),
)
_ICPR_PART0_FULL = "66dc535ed4f0cae9578298d1722f5bb89103e982"  # before the metadata was trimmed to two videos
_FFPP = "test/data/ffpp/"
_DFDC = "test/data/dfdc/"
_CROPS = "cnn3d/data/face_videos_by_real_fake/"


def _icpr_dfdc(part: str, name: str, blob: str) -> Clip:
    meta = DfdcMetadata("icpr2020dfdc", SOURCES[0].commit, f"{_DFDC}{part}/metadata.json", name)
    return Clip("icpr2020dfdc", f"{_DFDC}{part}/{name}", blob, "DFDC", "DFDC", meta)


def _crop(folder: str, file: str, blob: str) -> Clip:
    name = file[2:].split(".mp4")[0] + ".mp4"  # "0_abcdefghij.mp4_0_0.mp4" -> "abcdefghij.mp4"
    meta = DfdcMetadata("icpr2020dfdc", _ICPR_PART0_FULL, f"{_DFDC}dfdc_train_part_0/metadata.json", name)
    return Clip("jphdotam-dfdc", f"{_CROPS}{folder}/{file}", blob, "DFDC", "other", meta,
                note="face crop re-encoded by the repository's author from DFDC part 0, not a full frame")


def _mudouble(path: str, blob: str) -> Clip:
    # The catalogue's method; decide_label checks it against the folder when building.
    method = "original" if path.startswith("original/") else path.split("/")[1]
    return Clip("mudouble-ffpp", f"media/in_out_videos/{path}", blob, method, "FF++c40", FfppFolder())


CLIPS = (
    # FaceForensics++ c23, shipped as test data by the ICPR 2020 DFDC paper's repository.
    Clip("icpr2020dfdc", f"{_FFPP}original_sequences/youtube/c23/videos/004.mp4",
         "939fe091c8b5e05e6a07b2b15f605780660e39d8", "original", "FF++c23", FfppFolder()),
    Clip("icpr2020dfdc", f"{_FFPP}original_sequences/youtube/c23/videos/519.mp4",
         "9c6c60825981efc5b041e42c539c6c07067d97f3", "original", "FF++c23", FfppFolder()),
    Clip("icpr2020dfdc", f"{_FFPP}original_sequences/youtube/c23/videos/634.mp4",
         "89f1afc2fe74fb179f725e8ebd6b7e33d3a75396", "original", "FF++c23", FfppFolder()),
    Clip("icpr2020dfdc", f"{_FFPP}original_sequences/youtube/c23/videos/750.mp4",
         "ef2a6407b6c865f0bdbe1eba4ff95b6f559aa7f1", "original", "FF++c23", FfppFolder()),
    Clip("icpr2020dfdc", f"{_FFPP}original_sequences/actors/c23/videos/24__outside_talking_still_laughing.mp4",
         "ee5071378b69864a3dde27e74761bf8f3f95a1e6", "original", "FF++c23", FfppFolder()),
    Clip("icpr2020dfdc", f"{_FFPP}manipulated_sequences/Deepfakes/c23/videos/519_515.mp4",
         "795dca628d5bdfbd3f6a198bebf2ac993c48c3c1", "Deepfakes", "FF++c23", FfppFolder()),
    Clip("icpr2020dfdc", f"{_FFPP}manipulated_sequences/Face2Face/c23/videos/750_743.mp4",
         "519449309535e306b74fa36422f6fa04baf98ad4", "Face2Face", "FF++c23", FfppFolder()),
    Clip("icpr2020dfdc", f"{_FFPP}manipulated_sequences/FaceSwap/c23/videos/634_660.mp4",
         "69e370f26f080a12a018fba6172f5a4f55e6666a", "FaceSwap", "FF++c23", FfppFolder()),
    Clip("icpr2020dfdc", f"{_FFPP}manipulated_sequences/NeuralTextures/c23/videos/004_982.mp4",
         "6bfad47b79d4e216689701b2e0bdb81c493af132", "NeuralTextures", "FF++c23", FfppFolder()),
    Clip("icpr2020dfdc", f"{_FFPP}manipulated_sequences/DeepFakeDetection/c23/videos/"
         "24_23__outside_talking_still_laughing__YR5OVD4S.mp4",
         "b1edd57f7c9cb3784dd35f3fa9f9bcc6d3e0d62b", "DeepFakeDetection", "FF++c23", FfppFolder()),
    # DFDC training-part clips with the metadata.json beside them.
    _icpr_dfdc("dfdc_train_part_0", "awnfpubqmo.mp4", "e55d88159f72529cec5298ea34964fb56257a4d5"),
    _icpr_dfdc("dfdc_train_part_0", "brtujopkby.mp4", "c4f8bfd0aac02ffd814aaea1ce30c5713889a869"),
    _icpr_dfdc("dfdc_train_part_1", "vtfpbtmgfh.mp4", "89500bee0d8a464784af5d69d747db125fd95bca"),
    _icpr_dfdc("dfdc_train_part_1", "zvqinhzeah.mp4", "333a87b7e718fbe12e1b32a7a5ca57fedfaf45f1"),
    _icpr_dfdc("dfdc_train_part_10", "widuwuoiur.mp4", "b927be329e4e61136713d11eaa86802de21352f5"),
    _icpr_dfdc("dfdc_train_part_10", "yhffcuhhjy.mp4", "d7c353d9b0ec252fc88efd4c149e2bd9865a8f45"),
    # The notebook samples: "Video prediction.ipynb" loads one into vid_real_faces, the other into vid_fake_faces.
    Clip("icpr2020dfdc", "notebook/samples/lynaeydofd.mp4", "fe512691a64a03e55a160160f40424496b6efabb", "DFDC", "DFDC",
         NotebookVariable("notebook/Video prediction.ipynb", "samples/lynaeydofd.mp4")),
    Clip("icpr2020dfdc", "notebook/samples/mqzvfufzoq.mp4", "6affc7557279634fe2c50cfe02cf30e44cf8e207", "DFDC", "DFDC",
         NotebookVariable("notebook/Video prediction.ipynb", "samples/mqzvfufzoq.mp4")),
    # The Kaggle DFDC training sample (train_sample_videos) with its metadata.json.
    *(Clip("deepfake-detect", f"train_sample_videos/{name}", blob, "DFDC", "DFDC",
           DfdcMetadata("deepfake-detect", SOURCES[1].commit, "train_sample_videos/metadata.json", name))
      for name, blob in (("aagfhgtpmv.mp4", "6dd65e471e8b1a2f17da15af78b5d757c3f688c3"),
                         ("aapnvogymq.mp4", "d9abaca9ffc0e3565e829e88a06eacc73e23abfe"),
                         ("abarnvbtwb.mp4", "3db333096cb74b1b2177ab0e4c0148d3baa07843"),
                         ("abofeumbvv.mp4", "95c56e754bb457303566d9d0f25f234ac6f94b71"),
                         ("abqwwspghj.mp4", "66e6d5b07c0a2f7872fba9e2220d06fe80fe2ed4"))),
    # An FF++ fake (target_source naming exists only under manipulated_sequences); compression not stated.
    Clip("honggu-deepfake-detection", "videos/003_000.mp4", "a99f46ceb2f2cb108275a5d7ef9a22a2409ad47d",
         "Deepfakes", "other",
         StatedInReadme("fake", "FF++ target_source name 003_000; the README runs it with its Deepfakes model"),
         note="method inferred from the README (Deepfakes model and list); FF++ compression level not stated"),
    # DFDC part-0 face crops, one per source video, labelled by the official part-0 metadata.json.
    *(_crop("FAKE", file, blob) for file, blob in (
        ("0_aaqaifqrwn.mp4_0_0.mp4", "500befa9a40ba3b993f67bbe63af5a3b2ddb36ce"),
        ("0_abhggqdift.mp4_0_0.mp4", "63833ba76369a484bb33595c759183db5c1f07b9"),
        ("0_acagallncj.mp4_0_0.mp4", "30d0c0bf9a06193c013013fed0cf2a7f78ce22ff"),
        ("0_acdkfksyev.mp4_0_0.mp4", "5b298b4dbc4ac19616162c28e6e14715bf802cc9"),
        ("0_achdeirhym.mp4_0_0.mp4", "32551c06e4121233c0f0bd527d1a9ae120757008"),
        ("0_acryukkddn.mp4_0_0.mp4", "279e127c43b57f3c90fc7432d357e2efeed9d4e3"),
        ("0_adftmlvzfs.mp4_0_0.mp4", "44e98da90eed140170d1bd495646a733a6f473f0"),
        ("0_aegvtnwqoe.mp4_1_0.mp4", "3f616b52befbaaca50ec3a00db51dd2e95a8a77b"),
        ("0_aejvkfbtxs.mp4_0_0.mp4", "6e3239931921cb97d46ceff3421ff389d5f85abf"),
        ("0_aeqpxjlbwu.mp4_0_0.mp4", "d39bbdbe9a156c24cb9c9d606bee6b72fc1c1513"),
        ("0_ahhdprhoww.mp4_0_0.mp4", "8c288785154dc1e70a3ad4ea24dd14c6fe102cb2"),
        ("0_aimzesksew.mp4_0_0.mp4", "83995b173c19bc4894fd8b389f24847510cfcd5a"),
        ("0_aiuimrebtg.mp4_0_0.mp4", "c3fe3bfcbe7a79d89106921248886ff6a0a42d6d"),
        ("0_ajeegjgyzk.mp4_0_0.mp4", "63f1f48ac4c8c9023c34060038bc5f85cdd8d205"),
        ("0_akpuczgfpk.mp4_0_0.mp4", "3df60e6a1fdc7cfe1e0db7062aae32f7e79733e2"),
        ("0_alhqaurncj.mp4_0_0.mp4", "7c8c9c95eadf37857b2a23349322dd5e0d2fa8a8"),
        ("0_alidfjtwvg.mp4_0_0.mp4", "98cb462f51d987644c07ba8c8cf20c7c38e8080f"),
        ("0_alnkzqihau.mp4_0_0.mp4", "12ea60eaa737962146490e94276b5b0daf433b43"))),
    _crop("REAL", "0_aayrffkzxn.mp4_0_0.mp4", "3f9d4188122e8ba2e9ebed33b700ba2e369ee8b7"),
    # FaceForensics++ c40 (FF++ layout under shortened top folders original/ and manipulate/).
    *(_mudouble(path, blob) for path, blob in (
        ("original/actors/c40/videos/01__kitchen_pan.mp4", "04d8ca8d08228fa073416b7832c37d8cf462dd71"),
        ("original/actors/c40/videos/06__outside_talking_still_laughing.mp4", "d3a8b29e3671f36466deba449e97154205c41bf9"),
        ("original/actors/c40/videos/07__talking_against_wall.mp4", "2e5f9ec9d91ff46ced4ce51d8e30b7c138099ae1"),
        ("original/actors/c40/videos/08__podium_speech_happy.mp4", "a82593dd111575d9a8458c01642d5d8243937705"),
        ("original/actors/c40/videos/08__talking_against_wall.mp4", "581ba04a711668af6e4af5c7b557d2d0f1685409"),
        ("original/actors/c40/videos/09__walking_down_street_outside_angry.mp4", "e26f5d5eddab87d4cec540653f910e34d8288a54"),
        ("original/actors/c40/videos/13__talking_against_wall.mp4", "687ec88f0c3a91eaa105226c11ab72c7ad104ab7"),
        ("original/actors/c40/videos/13__walking_down_indoor_hall_disgust.mp4", "88e8364a79c3b02444a5189d8188a09a1be886fe"),
        ("original/actors/c40/videos/18__kitchen_pan.mp4", "d2f30652598214222aca3e2f488d8a49b1329dfe"),
        ("original/actors/c40/videos/27__kitchen_pan.mp4", "ca9ed335dca71f3ef642848dd5b23bee29872e3c"),
        ("original/youtube/c40/videos/183.mp4", "4bd88b586ee97b9b105d62e497b75c89571640b3"),
        ("original/youtube/c40/videos/253.mp4", "3a35002d51fe18f6bee9929dc287970568e8e8cf"),
        ("original/youtube/c40/videos/469.mp4", "2eadbf7f26e9f8a5f01c236171662585f19adec0"),
        ("original/youtube/c40/videos/481.mp4", "8cc0db6fa9b3d0655ab46f1f8c0ddc64d0ad9216"),
        ("original/youtube/c40/videos/585.mp4", "4fce3c0e0869ddb0e68833496d628a7c5ca7ebc6"),
        ("original/youtube/c40/videos/599.mp4", "55f0bfb418b37e3abe23589ac9b272a8b8ef5fc9"),
        ("original/youtube/c40/videos/672.mp4", "0f00471b14d56295ea23df8254a7ab12625efb28"),
        ("original/youtube/c40/videos/720.mp4", "a4f19ae720dfe55f804eddc7f3809e94b02ccb7d"),
        ("original/youtube/c40/videos/866.mp4", "2f382d06978d9cc348248e96784ed722407254f9"),
        ("original/youtube/c40/videos/878.mp4", "d560b100d82e8c2c12310d7dcdbbf605d877471a"),
        ("manipulate/Deepfakes/c40/videos/183_253.mp4", "a6c8f9a821d41a78deb142a2f7de8ecd1076b73d"),
        ("manipulate/Deepfakes/c40/videos/253_183.mp4", "7aa3d72fc2fa48fd8053808b56e05485250e95fd"),
        ("manipulate/Deepfakes/c40/videos/469_481.mp4", "179a6b6dafeaa07abec2c8e900437fcc393f20d9"),
        ("manipulate/Deepfakes/c40/videos/481_469.mp4", "f27422fd4a35d6e96e01ca929b5703b163c5f852"),
        ("manipulate/Deepfakes/c40/videos/585_599.mp4", "081bd708628f45deacb1ea2a4f58cba65656f197"),
        ("manipulate/Deepfakes/c40/videos/599_585.mp4", "d1b29ba84fc5427651b18013358cdec95e95023a"),
        ("manipulate/Deepfakes/c40/videos/672_720.mp4", "6f9299191d3a8c13f32801fe3d769185a68071f7"),
        ("manipulate/Deepfakes/c40/videos/720_672.mp4", "7fd625164716204e24ccf3ac5f76c164912579f3"),
        ("manipulate/Deepfakes/c40/videos/866_878.mp4", "4720d1b27561d7e93dbf8f6a20d3819c497282e0"),
        ("manipulate/Deepfakes/c40/videos/878_866.mp4", "54bdc41d5604b5f3ca7e81ab301b7e79fd865523"),
        ("manipulate/Face2Face/c40/videos/183_253.mp4", "293b3c52ab83d4b9261ab439d2b715944b53ad56"),
        ("manipulate/Face2Face/c40/videos/253_183.mp4", "f4880b6cf78906bd789fed012f6a06267eebded4"),
        ("manipulate/Face2Face/c40/videos/469_481.mp4", "9ee0fb67d0f1b239730262ca28bf3dcaf1b35334"),
        ("manipulate/Face2Face/c40/videos/481_469.mp4", "24d37cecedbb8af36a06e9388eacec9941828f0d"),
        ("manipulate/Face2Face/c40/videos/585_599.mp4", "5ee9ba8859549d9d83d9327c03974d8ecd518571"),
        ("manipulate/Face2Face/c40/videos/599_585.mp4", "2293c55af230c3c3130f8cd524c51114d64eb907"),
        ("manipulate/Face2Face/c40/videos/672_720.mp4", "768ebea5370df4d3b3477890651feca07acc78ee"),
        ("manipulate/Face2Face/c40/videos/720_672.mp4", "fad5b1b173f434d713c2ad7b0abf49d270c31abe"),
        ("manipulate/Face2Face/c40/videos/866_878.mp4", "2595da930af70872fc6c729ead45c5452be291a5"),
        ("manipulate/Face2Face/c40/videos/878_866.mp4", "0303a27377d763a00125a928d89c53e0787a703c"),
        ("manipulate/FaceSwap/c40/videos/183_253.mp4", "9dd9bdeca123e60847544a49b5b67057b6e73e9f"),
        ("manipulate/FaceSwap/c40/videos/253_183.mp4", "cb81b2aeb7f4f6826fb7a7d4ae87d2b091c848e7"),
        ("manipulate/FaceSwap/c40/videos/469_481.mp4", "f3e753fbf0d71c667d62701b2b7639066bab536d"),
        ("manipulate/FaceSwap/c40/videos/481_469.mp4", "36324431eccdc5959b4d01f9984cb1e792d3f4e7"),
        ("manipulate/FaceSwap/c40/videos/585_599.mp4", "e090af749342563ba733af52fe7bd0bb98e2fa5c"),
        ("manipulate/FaceSwap/c40/videos/599_585.mp4", "40c60cb4ab0ecad7d3ca74d6dfed2f24b2be9bc4"),
        ("manipulate/FaceSwap/c40/videos/672_720.mp4", "4f7f1b677512353cc76610e5939410b29565f5ba"),
        ("manipulate/FaceSwap/c40/videos/720_672.mp4", "14d1bbe7ca63bf9bb70ef2bcb6c1b1bfaddf97de"),
        ("manipulate/FaceSwap/c40/videos/866_878.mp4", "d6d0289db2095f81aa28e6feea9c03eef3982bb2"),
        ("manipulate/FaceSwap/c40/videos/878_866.mp4", "7f6d6fcb47de1489f9b57af81a037d6e5da9502a"),
        ("manipulate/NeuralTextures/c40/videos/183_253.mp4", "27d893a218280478d5f1364cf59a66443c64d698"),
        ("manipulate/NeuralTextures/c40/videos/253_183.mp4", "48ed92482233849e25aab6905022558b2b17f950"),
        ("manipulate/NeuralTextures/c40/videos/469_481.mp4", "99705c2b198ffa89ec73b475dee42a6413f81969"),
        ("manipulate/NeuralTextures/c40/videos/481_469.mp4", "812b72d28f36857e85a16bc4728030e511a8cdad"),
        ("manipulate/NeuralTextures/c40/videos/585_599.mp4", "35ca9ffaa431958595c3cfe0798de86d30d4c073"),
        ("manipulate/NeuralTextures/c40/videos/599_585.mp4", "4a21baa03484c2a3482428c1a5f749fc001af946"),
        ("manipulate/NeuralTextures/c40/videos/672_720.mp4", "3a9e6e1cbab313117e6539a8fa08decfbf6ad911"),
        ("manipulate/NeuralTextures/c40/videos/720_672.mp4", "86914cf77beca03b1a43baba57b6ef54f155ec46"),
        ("manipulate/NeuralTextures/c40/videos/866_878.mp4", "54eaca142a35741fb8254202b20fdff1ce3d2968"),
        ("manipulate/NeuralTextures/c40/videos/878_866.mp4", "1ac7c1c591ebff7c7c493878ebb5aec18d236244"),
    )),
    # DeeperForensics Challenge 2020 local test clips; the README says the score is the probability of fake.
    *(Clip("deeperforensics-challenge", f"test-data/{name}", blob, "DeeperForensics", "DeeperForensics",
           GroundTruthJson("test-data/local_test_groundtruth.json", name,
                           "README: the output is the predicted probability that the video is fake, so 1 = fake"))
      for name, blob in (("000000.mp4", "9a9a7198956dcece4a4adc5ad3fcb9e279c26eac"),
                         ("000001.mp4", "a064cde5ea34cb6bba3e6de54ae0bce80f85f942"),
                         ("000002.mp4", "b92f9743be8ed7bb443d285249e7a4d5cfa70a09"),
                         ("000003.mp4", "0c8fcb108e1ca7bec08e520061d60d2566f34f56"))),
    # An FF++ pair (same scene, the face differs) named by the repository itself; compression not stated.
    Clip("cyshih-deepfake-detection", "test_video_example/real.mp4", "8a5db8b40a4a4c2933aefbead638761ad84c1f07",
         "original", "other", StatedInReadme("real", "file name real.mp4; README: `python3 test.py -i real.mp4`"),
         note="FF++ material by the README; compression level not stated"),
    Clip("cyshih-deepfake-detection", "test_video_example/fake.mp4", "4ff266197302377429dcdbfda2b397d7fd723a1f",
         "unknown", "other", StatedInReadme("fake", "file name fake.mp4; README: `python3 test.py -i fake.mp4`"),
         note="FF++ material by the README; method and compression level not stated"),
)


class DevsetError(Exception):
    """A clone, a file or a label that cannot be used; the message says which and why."""


@dataclass
class BuildResult:
    """What a build wrote and what it had to leave out, each with its reason."""

    rows: list[dict] = field(default_factory=list)
    left_out: list[dict] = field(default_factory=list)


def blob_id(data: bytes) -> str:
    """The git blob id of some bytes (what `git hash-object` prints), used to pin each clip's content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _git(clone: Path, *args: str) -> bytes:
    # Every transport off: a partial clone must fail on a missing object rather than fetch it.
    cmd = ["git", "-c", "protocol.allow=never", "-C", str(clone), *args]
    env = {**os.environ, "GIT_NO_LAZY_FETCH": "1", "GIT_TERMINAL_PROMPT": "0"}
    done = subprocess.run(cmd, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise DevsetError(done.stderr.decode(errors="replace").strip() or f"git {args[0]} failed")
    return done.stdout


def read_at(clone: Path, commit: str, path: str) -> bytes:
    """A file's bytes at a commit of a local clone (bare or not), without touching its work tree."""
    try:
        return _git(clone, "show", f"{commit}:{path}")
    except DevsetError as exc:
        # Shallow or size-filtered copies lack some objects (mirrors often drop files of 4 MiB and more).
        if "bad object" in str(exc) or "does not exist" in str(exc) or "unable to read" in str(exc):
            raise DevsetError(f"the clone lacks {path} at {commit[:12]} (shallow, filtered or older clone?)") from exc
        raise


def find_clone(clones: Path, repo: str, overrides: dict[str, Path] | None = None) -> Path | None:
    """Where the user cloned `owner/name`: an override, else clones/owner/name, clones/owner+name or clones/name."""
    if overrides and repo in overrides:
        return overrides[repo]
    owner, name = repo.split("/")
    # Owner-qualified places first: two sources may share a name (HongguLiu/ and cyshih704/Deepfake-Detection).
    for candidate in (clones / owner / name, clones / f"{owner}+{name}", clones / f"{owner}+{name}" / "repo", clones / name):
        if candidate.is_dir():
            try:
                _git(candidate, "rev-parse", "--git-dir")
                return candidate
            except DevsetError:
                continue
    return None


def _ffpp_match(path: str) -> re.Match:
    match = _FFPP_PATH.search(path)
    if not match:
        raise DevsetError(f"{path}: not in the FF++ layout (original_sequences or manipulated_sequences/<method>)")
    return match


def ffpp_label(path: str) -> tuple[str, str]:
    """(label, method) from an FF++ path: original_sequences -> real/original, manipulated_sequences/M -> fake/M
    (also under the shortened top folders original/ and manipulate/)."""
    match = _ffpp_match(path)
    if match.group(1).startswith("original"):
        return "real", "original"
    return "fake", match.group(2)


def ffpp_compression(path: str) -> str:
    """The compression folder of an FF++ path: 'c23', 'c40' or 'raw'."""
    return _ffpp_match(path).group(3)


def ground_truth_label(document: bytes, key: str) -> str:
    """'real' or 'fake' from a ground-truth JSON mapping file names to 0 (real) or 1 (fake)."""
    entries = json.loads(document)
    if not isinstance(entries, dict) or key not in entries:
        raise DevsetError(f"{key} is not in the ground-truth file")
    value = entries[key]
    if isinstance(value, bool) or value not in (0, 1):
        raise DevsetError(f"{key}: ground truth {value!r} is neither 0 nor 1")
    return "fake" if value == 1 else "real"


def dfdc_label(metadata: bytes, key: str) -> str:
    """'real' or 'fake' from a DFDC metadata.json's entry for `key`."""
    entries = json.loads(metadata)
    if key not in entries:
        raise DevsetError(f"{key} is not in the metadata file")
    value = str(entries[key].get("label", "")).upper()
    if value not in ("REAL", "FAKE"):
        raise DevsetError(f"{key}: metadata label {value!r} is neither REAL nor FAKE")
    return value.lower()


def notebook_label(notebook: bytes, name: str) -> str:
    """'real' or 'fake' from the code cell that loads `name` into a variable whose name says which."""
    cells = json.loads(notebook)["cells"]
    found = set()
    pattern = re.compile(r"^\s*(\w+)\s*=.*['\"]" + re.escape(name) + r"['\"]", re.MULTILINE)
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        for variable in pattern.findall("".join(cell.get("source", []))):
            words = set(variable.lower().split("_"))
            found |= words & {"real", "fake"}
    if len(found) != 1:
        raise DevsetError(f"the notebook does not name {name} as exactly one of real/fake (found {sorted(found)})")
    return found.pop()


def decide_label(clip: Clip, clones: dict[str, Path | None], sources: dict[str, Source]) -> tuple[str, str]:
    """(label, evidence) for a clip, from the metadata its rule names.

    Raises:
        DevsetError: the metadata is missing, or disagrees with the catalogue's method.
    """
    rule = clip.rule
    home = sources[clip.source]
    if isinstance(rule, FfppFolder):
        label, method = ffpp_label(clip.path)
        if method != clip.method:
            raise DevsetError(f"{clip.path}: the folder says {method}, the catalogue says {clip.method}")
        compression = ffpp_compression(clip.path)
        if clip.dataset.startswith("FF++") and clip.dataset != f"FF++{compression}":
            raise DevsetError(f"{clip.path}: the folder says {compression}, the catalogue says {clip.dataset}")
        return label, f"FF++ folder {_ffpp_match(clip.path).group(1)} ({compression})"
    if isinstance(rule, DfdcMetadata):
        clone = clones.get(sources[rule.source].repo)
        if clone is None:
            raise DevsetError(f"no clone of {sources[rule.source].repo} for the metadata")
        label = dfdc_label(read_at(clone, rule.commit, rule.path), rule.key)
        return label, f"{sources[rule.source].repo}@{rule.commit[:12]}:{rule.path} [{rule.key}] label={label.upper()}"
    if isinstance(rule, NotebookVariable):
        label = notebook_label(read_at(clones[home.repo], home.commit, rule.path), rule.name)
        return label, f"{home.repo}@{home.commit[:12]}:{rule.path} loads {rule.name} as the {label} video"
    if isinstance(rule, GroundTruthJson):
        label = ground_truth_label(read_at(clones[home.repo], home.commit, rule.path), rule.key)
        return label, f"{home.repo}@{home.commit[:12]}:{rule.path} [{rule.key}] = {int(label == 'fake')} ({rule.why})"
    if rule.label not in LABELS:
        raise DevsetError(f"{clip.path}: stated label {rule.label!r}")
    return rule.label, f"stated: {rule.why}"


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def build(clones_dir: Path, out: Path, overrides: dict[str, Path] | None = None,
          sources: tuple[Source, ...] = SOURCES, clips: tuple[Clip, ...] = CLIPS,
          forbidden_root: Path = REPO_ROOT) -> BuildResult:
    """Copy every catalogued clip out of the user's clones into `out`, byte for byte, and write the labels.

    Each clip's bytes must match its recorded git blob id; its label comes from the metadata its rule
    names; it must probe as a video. A clip that fails any of these is left out with the reason.

    Args:
        clones_dir: folder holding the user's clones (see find_clone for the names looked for).
        out: output folder; receives <source>/<path in repo>, labels.csv and manifest.json.
        overrides: owner/name -> clone path, for clones stored elsewhere.
        sources, clips: the catalogue (tests pass their own).
        forbidden_root: a folder `out` must not be inside (this repository: the clips are never committed).

    Returns:
        BuildResult with the rows written to labels.csv and the clips left out.

    Raises:
        DevsetError: `out` is inside forbidden_root.
    """
    if _inside(out, forbidden_root):
        raise DevsetError(f"{out} is inside {forbidden_root}: research-only clips must stay outside the repository")
    by_key = {s.key: s for s in sources}
    clones = {s.repo: find_clone(clones_dir, s.repo, overrides) for s in sources}
    result = BuildResult()
    for clip in clips:
        home = by_key[clip.source]
        where = {"source": clip.source, "repo": home.repo, "commit": home.commit, "repo_path": clip.path}
        clone = clones[home.repo]
        try:
            if clone is None:
                raise DevsetError(f"no clone of {home.repo} under {clones_dir}")
            data = read_at(clone, home.commit, clip.path)
            if blob_id(data) != clip.blob:
                raise DevsetError(f"content differs from the catalogued blob {clip.blob} (got {blob_id(data)})")
            label, evidence = decide_label(clip, clones, by_key)
            target = out / clip.source / clip.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            try:
                info = probe(target)
            except VideoError as exc:
                target.unlink()
                raise DevsetError(f"not a decodable video: {exc}") from exc
        except DevsetError as exc:
            result.left_out.append({**where, "reason": str(exc)})
            continue
        result.rows.append({
            "path": f"{clip.source}/{clip.path}", "label": label, "source": clip.source, "method": clip.method,
            "dataset": clip.dataset, **where, "git_blob": clip.blob, "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data), "frames": info.frames, "fps": round(info.fps, 3), "width": info.width,
            "height": info.height, "duration_s": round(info.duration_s, 3), "codec": info.codec,
            "label_evidence": evidence, "note": clip.note,
        })
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.rows)
    manifest = {"sources": [vars(s) for s in sources], "clips": result.rows, "left_out": result.left_out,
                "counts": counts(result.rows)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return result


def counts(rows: list[dict]) -> dict[str, int]:
    """Clips per label, per label x method and per dataset x label (the table in docs/evaluation.md)."""
    tally: dict[str, int] = {}
    for row in rows:
        for key in (row["label"], f"{row['label']}/{row['method']}", f"{row['dataset']}/{row['label']}"):
            tally[key] = tally.get(key, 0) + 1
    return dict(sorted(tally.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.datasets.devset", description=__doc__.splitlines()[0])
    parser.add_argument("--clones", type=Path, required=True, help="folder holding clones of the source repositories")
    parser.add_argument("--out", type=Path, required=True, help="output folder (outside this repository)")
    parser.add_argument("--repo", action="append", default=[], metavar="OWNER/NAME=PATH",
                        help="a clone stored elsewhere (repeatable)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.repo:
        name, sep, path = item.partition("=")
        if not sep or name.count("/") != 1:
            parser.error(f"--repo takes OWNER/NAME=PATH, not {item!r}")
        overrides[name] = Path(path)
    try:
        result = build(args.clones, args.out, overrides)
    except DevsetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(result.rows)} clips written to {args.out / 'labels.csv'}; {len(result.left_out)} left out")
    for key, n in counts(result.rows).items():
        print(f"  {key}: {n}")
    for item in result.left_out:
        print(f"  left out {item['repo']}:{item['repo_path']}: {item['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
