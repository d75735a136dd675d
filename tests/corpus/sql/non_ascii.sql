SELECT "naïve", 'ünïcödé', ™ FROM 表 WHERE ключ = 'значение' -- коммент
