"""Public CT datasets in their published layouts -> MONAI decathlon-style datalists.

One module per dataset (:mod:`.totalsegmentator`, :mod:`.msd`, :mod:`.sinoct`, :mod:`.cq500`), each with one
``convert_<name>`` function that the ``ctfm convert-<name>`` command calls; :mod:`.datalist` writes every
datalist the same way (atomically, never over an existing one unless asked).
"""
